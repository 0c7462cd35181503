"""The reference tokenizer on tiny hand-made vocabularies and the synthetic GGUF models.

Expected ids are worked out by hand from llama.cpp's rules (see llambo/reference/tokenizer.py);
tests/parity checks the same code against llama.cpp itself on real vocabularies.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

import gguf
import pytest
from support.synthetic_gguf import SyntheticSpec, byte_level_alphabet, write_model

from llambo.default_model import cached_default_model
from llambo.errors import InvalidRequest, ModelLoadError
from llambo.reference.tokenizer import (
    ATTR_CONTROL,
    ATTR_NORMAL,
    ATTR_RSTRIP,
    ATTR_USER_DEFINED,
    SUPPORTED_PRE_TOKENIZERS,
    Tokenizer,
    _collapse_table,
)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
ALPHABET = byte_level_alphabet()  # token id == byte value in the vocabularies below


def ids_of(text: str) -> list[int]:
    """The byte-token ids of ``text`` (no merges)."""
    return list(text.encode("utf-8"))


def bpe(
    extra: list[str] = (),  # type: ignore[assignment]
    merges: list[str] = (),  # type: ignore[assignment]
    specials: dict[str, int] | None = None,
    **fields: Any,
) -> Tokenizer:
    """A byte-level vocabulary: the 256 byte tokens, then ``extra`` (normal), then ``specials``."""
    tokens = [*ALPHABET, *extra]
    types = [NORMAL] * len(tokens)
    for text, kind in (specials or {}).items():
        tokens.append(text)
        types.append(kind)
    base: dict[str, Any] = {"tokens": tokens, "token_type": types, "merges": list(merges), "model": "gpt2"}
    base.setdefault("pre", "gpt-2")
    return Tokenizer.from_fields({**base, **fields})


# ---------------------------------------------------------------------------------------------
# Byte-level BPE
# ---------------------------------------------------------------------------------------------


def test_bytes_without_merges_map_to_byte_tokens() -> None:
    tok = bpe()
    assert tok.encode("Hi!") == ids_of("Hi!")
    assert tok.encode("é€😀") == ids_of("é€😀")
    assert tok.encode(" x") == [32, 120]
    assert tok.encode("") == []


def test_merges_apply_lowest_rank_first_then_leftmost() -> None:
    extra = ["ab", "bc", "abc", "xy", "yz", "aa"]
    a = 97
    tok = bpe(extra, ["b c", "a b", "ab c"])
    assert tok.encode("abc") == [a, 256 + 1]  # "bc" (rank 0) wins; "a bc" is no merge
    tok = bpe(extra, ["a b", "b c", "ab c"])
    assert tok.encode("abc") == [256 + 2]  # ab, then ab+c
    tok = bpe(extra, ["y z", "x y"])
    assert tok.encode("xyz") == [ord("x"), 256 + 4]
    tok = bpe(extra, ["a a"])
    assert tok.encode("aaa") == [256 + 5, a]  # leftmost pair first
    assert tok.encode("aaaa") == [256 + 5, 256 + 5]
    assert bpe(extra, ["a b", "a b"]).encode("ab") == [256]  # a repeated merge keeps its first rank
    assert bpe(extra, ["ab", "b c"]).encode("abc") == [a, 257]  # a merge without a space is ignored


def test_a_merge_that_is_no_token_falls_back_to_single_bytes() -> None:
    # "qq" is merged but is not a token: its single ASCII bytes are tokens.
    assert bpe([], ["q q"]).encode("qq") == [113, 113]
    # "é" is bytes C3 A9, i.e. "Ã©"; merged into a non-token, its bytes (as raw single bytes above
    # 0x7F) are no tokens either, so it vanishes, as in llama.cpp.
    assert bpe([], ["Ã ©"]).encode("aé") == [97]
    assert bpe().encode("aé") == [97, 0xC3, 0xA9]


def test_missing_byte_tokens_are_dropped() -> None:
    tokens = [ALPHABET[b] for b in range(256) if b != 0xC3]
    tok = Tokenizer.from_fields({"tokens": tokens, "merges": [], "model": "gpt2", "pre": "gpt-2"})
    assert tok.encode("é") == [0xA9]  # "Ã" (0xC3) is no token and is dropped


def test_ignore_merges_takes_whole_words_that_are_tokens() -> None:
    # llama3 takes "Ġabc" whole although no merge builds it; gpt-2 merges what it can.
    extra = ["Ġabc", "ab"]
    assert bpe(extra, ["a b"], pre="llama3", add_bos=False).encode(" abc") == [256]
    assert bpe(extra, ["a b"], pre="gpt-2").encode(" abc") == [32, 257, 99]


def test_special_tokens_need_parse_special_unless_user_defined() -> None:
    tok = bpe(specials={"<|im_start|>": CONTROL, "<|im_end|>": CONTROL, "<tool>": USER_DEFINED})
    im_start, im_end, tool = 256, 257, 258
    text = "a<|im_end|>b"
    assert tok.encode(text, parse_special=True) == [97, im_end, 98]
    assert tok.encode(text, parse_special=False) == ids_of(text)
    assert tok.encode("x<tool>y") == [120, tool, 121]  # user-defined: always cut out
    chat = "<|im_start|>user\nhi<|im_end|>\n"
    assert tok.encode(chat, parse_special=True) == [im_start, *ids_of("user\nhi"), im_end, 10]
    assert tok.encode("<|im_end|><|im_end|>", parse_special=True) == [im_end, im_end]
    assert tok.encode("<|im_end", parse_special=True) == ids_of("<|im_end")


def test_longer_special_tokens_are_cut_first() -> None:
    tok = bpe(specials={"<a>": CONTROL, "<a><b>": CONTROL})
    assert tok.encode("<a><b><a>", parse_special=True) == [257, 256]


def test_phi3_special_tokens_eat_following_whitespace() -> None:
    specials = {
        "<unk>": UNKNOWN,
        "<s>": CONTROL,
        "</s>": CONTROL,
        "<|endoftext|>": CONTROL,
        "<|user|>": CONTROL,
    }
    tok = bpe(specials=specials, name="Phi-3-mini")
    user = 260
    assert tok.token_attr(user) & ATTR_RSTRIP
    assert not tok.token_attr(259) & ATTR_RSTRIP  # <|endoftext|> is exempted
    assert tok.encode("<|user|> \n hi", parse_special=True) == [user, *ids_of("hi")]
    assert tok.encode("<|endoftext|> hi", parse_special=True) == [259, *ids_of(" hi")]
    with pytest.raises(ModelLoadError, match="</s>"):
        bpe(specials={"<|user|>": CONTROL}, name="phi3")


def test_add_bos_and_add_eos() -> None:
    specials = {"<s>": CONTROL, "</s>": CONTROL}
    tok = bpe(specials=specials, bos=256, eos=257, add_bos=True, add_eos=True)
    assert tok.encode("a") == [256, 97, 257]
    assert tok.encode("a", add_special=False) == [97]
    assert tok.encode("") == [256, 257]
    assert tok.decode([256, 97, 257], remove_special=True) == "a"
    assert tok.decode([256, 97, 257], unparse_special=True) == "<s>a</s>"
    # BPE defaults: no BOS/EOS added, ids 11/11 unless set; llama3 adds a BOS.
    plain = bpe()
    assert (plain.add_bos, plain.add_eos) == (False, False)
    assert plain.special_tokens["bos"] == plain.special_tokens["eos"] == 11
    assert bpe(pre="llama3").add_bos
    assert bpe(pre="llama3", add_bos=False).add_bos is False
    assert bpe(pre="chatglm-bpe").special_tokens["bos"] is None
    with pytest.raises(ModelLoadError, match="BOS"):
        bpe(pre="chatglm-bpe", add_bos=True).encode("a")


def test_special_token_ids_out_of_range_keep_the_default() -> None:
    tok = bpe(bos=10_000, eos=-1, eot=65, pad=None)
    assert tok.special_tokens["bos"] == 11
    assert tok.special_tokens["eos"] == 11
    assert tok.special_tokens["eot"] == 65
    assert tok.special_tokens["pad"] is None
    assert bpe(fim_pre=3, prefix=4).special_tokens["fim_pre"] == 4  # the deprecated key comes last


def test_end_of_generation_tokens() -> None:
    specials = {
        "<|endoftext|>": CONTROL,
        "<|im_end|>": NORMAL,
        "<reponame>": CONTROL,
        "<|im_start|>": CONTROL,
    }
    tok = bpe(specials=specials, eos=256)
    endoftext, im_end, reponame, im_start = 256, 257, 258, 259
    assert tok.eog_tokens == {endoftext, im_end, reponame}  # EOS, the EOG texts, the FIM repo token
    assert not tok.is_eog(im_start) and not tok.is_eog(-1) and not tok.is_eog(10**6)
    assert tok.special_tokens["eot"] == endoftext  # several EOT-looking tokens: the lowest id
    assert tok.special_tokens["fim_rep"] == reponame
    assert tok.token_attr(im_end) & ATTR_CONTROL  # a normal token that looks like EOG becomes control
    assert tok.token_bytes(im_end) == b""


def test_gpt_oss_and_o200k_rules() -> None:
    specials = {"<|return|>": CONTROL, "<|call|>": CONTROL, "<|end|>": CONTROL, "<|channel|>": CONTROL}
    tok = bpe(specials=specials, eos=256)
    ret, call, end, channel = 256, 257, 258, 259
    assert tok.special_tokens["eot"] == end
    assert tok.eog_tokens == {ret, call}  # "<|end|>" leaves the EOG set when return and call exist
    assert tok.token_attr(end) == ATTR_USER_DEFINED
    assert tok.token_attr(channel) == ATTR_USER_DEFINED
    assert tok.token_bytes(channel) == b"<|channel|>"
    assert tok.encode("a<|channel|>b") == [97, channel, 98]


def test_pieces_by_token_type() -> None:
    tokens = [*ALPHABET, "Ġhi", "<c>", "<u>", "<unk>", "unused1", "undef", "<0x41>", "Ġx"]
    types = [NORMAL] * 256 + [NORMAL, CONTROL, USER_DEFINED, UNKNOWN, UNUSED, 0, BYTE, 7]
    fields = {"tokens": tokens, "token_type": types, "merges": [], "model": "gpt2", "pre": "gpt-2"}
    tok = Tokenizer.from_fields(fields)
    normal, control, user, unknown, unused, undefined, byte, bad_type = range(256, 264)
    assert tok.token_bytes(normal) == b" hi"
    assert tok.token_bytes(control) == b"" and tok.token_piece(control, special=True) == b"<c>"
    assert tok.token_bytes(user) == b"<u>" == tok.token_piece(user, special=True)
    assert tok.token_bytes(unknown) == b"" and tok.token_piece(unknown, special=True) == b"<unk>"
    assert tok.token_bytes(unused) == b"" == tok.token_bytes(undefined) == tok.token_bytes(bad_type)
    assert tok.token_bytes(byte) == b"A"
    assert tok.token_bytes(ord("a")) == b"a" and tok.token_bytes(32) == b" " and tok.token_bytes(0) == b"\x00"
    with pytest.raises(InvalidRequest):
        tok.token_bytes(len(tokens))


def test_odd_token_texts() -> None:
    tokens = [*ALPHABET, "", b"\xff\xfe", "xq", "zq\x00r", "\x00zz"]
    tok = Tokenizer.from_fields({"tokens": tokens, "merges": ["x q"], "model": "gpt2", "pre": "gpt-2"})
    assert tok.token_text(256) == "[EMPTY_256]"
    # Characters outside the byte alphabet render as llama.cpp's [UNK_BYTE_0x..<token text>].
    assert tok.token_bytes(257) == b"[UNK_BYTE_0xefbfbd\xff\xfe][UNK_BYTE_0xefbfbd\xff\xfe]"
    assert tok.token_bytes(258) == b"xq" and tok.encode("xq") == [258]
    # GGUF strings are read as C strings, up to the first NUL.
    assert tok.token_text(259) == "zq" and tok.token_id("zq") == 259
    assert tok.token_text(260) == "[EMPTY_260]"
    with pytest.raises(ModelLoadError, match="duplicate"):
        Tokenizer.from_fields(
            {"tokens": [*ALPHABET, "a\x00b"], "merges": [], "model": "gpt2", "pre": "gpt-2"}
        )


def test_decode_round_trip_and_clean_spaces() -> None:
    tok = bpe(["Ġthe", "Ġt", "he"], ["Ġ t", "h e", "Ġt he"])
    text = "so the cat's 'hat' , ok ?"
    ids = tok.encode(text)
    assert 256 in ids  # " the"
    # gpt-2 vocabularies clean up like llama.cpp: " ?", " ,", " 's", " ' " lose a space.
    assert tok.decode(ids) == "so the cat's 'hat', ok?"
    assert tok.decode(tok.encode("a ' b it 's we 're I 'll")) == "a'b it's we're I 'll"
    smollm = bpe(pre="smollm")  # no clean-up
    for sample in (text, "a ' b", "日本 😀 x\n\ty", "  lead and trail  "):
        assert smollm.decode(smollm.encode(sample)) == sample
    assert smollm.decode_bytes([0xE6]) == b"\xe6"
    assert smollm.decode([0xE6, 97]) == "\ufffda"


def test_decode_strips_one_leading_space_when_the_vocabulary_prefixes_one() -> None:
    tok = bpe(add_space_prefix=True)
    assert tok.decode([32, 32, 97]) == " a"
    assert bpe().decode([32, 97]) == " a"


def test_invalid_input() -> None:
    tok = bpe()
    with pytest.raises(UnicodeEncodeError):
        tok.encode("\ud800")
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        tok.decode([0, 300])
    with pytest.raises(InvalidRequest):
        tok.decode([-1])
    with pytest.raises(TypeError):
        tok.decode(["a"])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# Pre-tokenizers and llama.cpp's character classes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pre", "text", "words"),
    [
        # SmolLM: digits one by one first, so a space never joins a number.
        ("smollm", "abc 12345 x", ["abc", " ", "1", "2", "3", "4", "5", " x"]),
        ("smollm", "a   1", ["a", "   ", "1"]),  # the run ends its piece: no space left for "1"
        ("smollm", "x1y", ["x", "1", "y"]),
        ("gpt-2", "abc 12345 x", ["abc", " 12345", " x"]),
        ("gpt-2", "a   b", ["a", "  ", " b"]),
        ("gpt-2", "a \n b", ["a", " \n", " b"]),
        ("gpt-2", "I'm 's 'S", ["I", "'m", " '", "s", " '", "S"]),
        ("gpt-2", "hello!!?? ok", ["hello", "!!??", " ok"]),
        ("llama3", "1234567 x", ["123", "456", "7", " x"]),
        ("llama3", "I'M 'S 'Ll", ["I", "'M", " '", "S", " '", "Ll"]),
        ("llama3", "a\n\n b", ["a", "\n\n", " b"]),
        ("llama3", "x  \n\ty", ["x", "  \n", "\ty"]),
        ("llama3", "!!!\n\nx", ["!!!\n\n", "x"]),
        ("qwen2", "1234 ab", ["1", "2", "3", "4", " ab"]),
        ("qwen2", ".abc", [".abc"]),
        ("default", "a+b==c 12345", ["a", "+", "b", "==", "c", " ", "123", "45"]),
        ("default", "x 1234567", ["x", " ", "123", "456", "7"]),
        ("qwen35", "e\u0301t\u00e9", ["e\u0301t\u00e9"]),
        ("qwen2", "e\u0301t\u00e9", ["e", "\u0301t\u00e9"]),
        ("laguna", "ab\n\ncd", ["ab", "\n\n", "cd"]),
    ],
)
def test_pre_tokenizer_splits(pre: str, text: str, words: list[str]) -> None:
    tok = bpe(pre=pre)
    assert tok.pre_tokenize(text) == words
    assert "".join(tok.pre_tokenize(text)) == text


def test_character_classes_come_from_llama_cpp_not_unicodedata() -> None:
    tok = bpe(pre="gpt-2")
    # U+31350 (CJK Extension H, Unicode 15) is a letter to llama.cpp whatever Python's
    # unicodedata version says; U+0378 is unassigned (not a letter).
    assert tok.pre_tokenize(" \U00031350\U00031351") == [" \U00031350\U00031351"]
    assert tok.pre_tokenize(" \u0378\u0379") == [" \u0378\u0379"]
    assert tok.pre_tokenize("a\u0378b") == ["a", "\u0378", "b"]
    # NBSP and U+3000 are whitespace; U+001C..U+001F (whitespace to str.isspace) are not.
    assert tok.pre_tokenize("a\u00a0\u00a0b") == ["a", "\u00a0", "\u00a0", "b"]  # only " " joins a word
    assert tok.pre_tokenize("a\u3000b") == ["a", "\u3000", "b"]
    assert tok.pre_tokenize("a\x1c\x1db") == ["a", "\x1c\x1d", "b"]
    # Superscript two and Arabic-Indic digits are numbers; U+2160 (Roman numeral) too.
    assert tok.pre_tokenize("x\u00b2\u0661\u2160") == ["x", "\u00b2\u0661\u2160"]


def test_collapse_table_matches_llama_cpp_source(repo_root: Path) -> None:
    source = repo_root / "third_party" / "llama.cpp" / "src" / "unicode-data.cpp"
    if not source.is_file():
        pytest.skip(f"no llama.cpp source at {source}")
    text = source.read_text(encoding="utf-8")

    def block(name: str) -> str:
        start = text.index(name)
        return text[start : text.index("};", start)]

    pairs = re.findall(r"\{0x([0-9A-Fa-f]+), 0x([0-9A-Fa-f]+)\}", block("unicode_ranges_flags"))
    ranges = [(int(a, 16), int(b, 16)) for a, b in pairs]
    whitespace = {int(x, 16) for x in re.findall(r"0x([0-9A-Fa-f]+)", block("unicode_set_whitespace"))}
    collapsed = {0x02: 0xD1, 0x04: 0xD2, 0x20: 0xD3, 0x10: 0xD4, 0x40: 0xD5}
    table = _collapse_table()
    for (start, flags), (end, _) in itertools.pairwise(ranges):
        for cp in (start, end - 1, (start + end) // 2):
            if cp < 0x80:
                expected = cp
            elif cp in whitespace:
                expected = 0x0B
            else:
                expected = collapsed.get(flags & 0xFF, 0xD0)
            assert table[cp] == expected, hex(cp)
    assert all(table[cp] == 0x0B for cp in whitespace if cp >= 0x80)


# ---------------------------------------------------------------------------------------------
# SentencePiece-style vocabularies
# ---------------------------------------------------------------------------------------------


def spm(pieces: dict[str, float], **fields: Any) -> Tokenizer:
    """<unk>, <s>, </s>, the 256 <0xXX> byte tokens (ids 3..258), then ``pieces`` with their scores."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [UNKNOWN, CONTROL, CONTROL, *[BYTE] * 256, *[NORMAL] * len(pieces)]
    scores = [0.0] * 259 + list(pieces.values())
    return Tokenizer.from_fields(
        {"tokens": tokens, "token_type": types, "scores": scores, "model": "llama", **fields}
    )


SPM_PIECES = {"▁": -10.0, "a": -10.0, "b": -10.0, "c": -10.0, "ab": -1.0, "bc": -2.0, "▁a": -5.0, "▁ab": -3.0}
SP, A, B, C, AB, BC, SP_A, SP_AB = range(259, 267)


def test_spm_merges_by_score() -> None:
    tok = spm(SPM_PIECES)
    assert tok.encode("abc") == [1, SP_AB, C]  # "ab" (best score), then "▁ab"; "▁abc" is no token
    assert tok.encode("abc", add_special=False) == [SP_AB, C]
    assert tok.encode("bc") == [1, SP, BC]
    even = spm({**SPM_PIECES, "ab": -2.0})  # tie between "ab" and "bc": the left one
    assert even.encode("abc", add_special=False) == [SP_AB, C]


def test_spm_byte_fallback_and_spaces() -> None:
    tok = spm(SPM_PIECES)
    assert tok.encode("é", add_special=False) == [SP, 3 + 0xC3, 3 + 0xA9]
    assert tok.encode("a b", add_special=False) == [SP_A, SP, B]
    no_prefix = spm(SPM_PIECES, add_space_prefix=False)
    assert no_prefix.encode("ab", add_special=False) == [AB]


def test_spm_special_tokens_and_space_prefix_after_them() -> None:
    tok = spm(SPM_PIECES, add_bos=False)
    assert tok.encode("a</s>a", parse_special=True) == [SP_A, 2, SP_A]  # a space prefix after a special
    assert tok.encode("a</s>a") == [SP_A, *(3 + ord(c) for c in "</s>"), A]
    assert tok.token_attr(A) == ATTR_NORMAL


def test_spm_decode_leading_space_rules() -> None:
    tok = spm(SPM_PIECES)
    assert tok.decode([SP_AB, C]) == "abc"  # the first piece's leading space goes
    assert tok.decode([1, SP_AB, C]) == " abc"  # BOS (rendered empty) takes the strip
    assert tok.decode([1, SP_AB, C], remove_special=True) == " abc"  # and so does removing it
    assert tok.decode([1, SP_AB, C], unparse_special=True) == "<s> abc"
    assert tok.decode([3 + 0xC3, 3 + 0xA9]) == "é"


# ---------------------------------------------------------------------------------------------
# Errors, loading and the synthetic models
# ---------------------------------------------------------------------------------------------


def test_unknown_and_unimplemented_pre_tokenizers_are_named() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown pre-tokenizer 'gpt2'.*supported: .*gpt-2.*smollm"):
        bpe(pre="gpt2")
    with pytest.raises(ModelLoadError, match=r"'tekken'.*not implemented.*supported: .*llama3"):
        bpe(pre="tekken")
    assert {
        "smollm",
        "gpt-2",
        "default",
        "llama3",
        "llama-v3",
        "llama-bpe",
        "qwen2",
    } <= SUPPORTED_PRE_TOKENIZERS


def test_bad_vocabularies() -> None:
    with pytest.raises(ModelLoadError, match="'bert'"):
        Tokenizer.from_fields({"tokens": ["a"], "model": "bert"})
    with pytest.raises(ModelLoadError, match="merges"):
        Tokenizer.from_fields({"tokens": ["a"], "model": "gpt2", "pre": "gpt-2"})
    with pytest.raises(ModelLoadError, match="duplicate"):
        Tokenizer.from_fields({"tokens": ["a", "a"], "model": "llama"})
    with pytest.raises(ModelLoadError, match="no tokens"):
        Tokenizer.from_fields({"tokens": [], "model": "llama"})
    with pytest.raises(TypeError, match="tokenz"):
        Tokenizer.from_fields({"tokenz": ["a"], "model": "llama"})


def test_missing_pre_tokenizer_means_default(caplog: pytest.LogCaptureFixture) -> None:
    tok = bpe(pre=None)
    assert tok.pre == ""
    assert tok.pre_tokenize("a+b 1234") == ["a", "+", "b", " ", "123", "4"]
    assert "default" in caplog.text


@pytest.mark.parametrize(("arch", "pre"), [("llama", "default"), ("qwen2", "qwen2")])
def test_synthetic_models(tmp_path: Path, arch: str, pre: str) -> None:
    path = write_model(tmp_path / f"{arch}.gguf", SyntheticSpec(arch=arch))
    tok = Tokenizer.from_file(path)
    assert (tok.model, tok.pre, tok.n_vocab) == ("gpt2", pre, 269)
    endoftext, im_start, im_end = 266, 267, 268
    assert tok.special_tokens["bos"] == tok.special_tokens["eos"] == endoftext
    assert not tok.add_bos and not tok.add_eos
    assert tok.eog_tokens == {endoftext, im_end}
    # merges: "Ġ t", "h e", "Ġt he" build " the" (id 258); "Ġ a" builds " a" (261)
    the, space_a = 258, 261
    assert tok.encode(" the a") == [the, space_a]
    assert tok.encode("<|im_start|>the<|im_end|>", parse_special=True) == [im_start, ord("t"), 257, im_end]
    assert tok.decode(tok.encode("Hello there, 123!")) == "Hello there, 123!"
    reader_tok = Tokenizer.from_gguf(gguf.GGUFReader(path))
    assert vars(reader_tok).keys() == vars(tok).keys()
    for name in (
        "model",
        "pre",
        "n_vocab",
        "add_bos",
        "add_eos",
        "special_tokens",
        "_texts",
        "_attrs",
        "_ranks",
    ):
        assert getattr(reader_tok, name) == getattr(tok, name), name


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no GGUF file"):
        Tokenizer.from_file(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(ModelLoadError, match="not a little-endian GGUF"):
        Tokenizer.from_file(bad)
    good = write_model(tmp_path / "m.gguf")
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        Tokenizer.from_file(truncated)


# ---------------------------------------------------------------------------------------------
# Speed on the default model (when it is in the cache)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_model() -> Path:
    path = cached_default_model()
    if path is None:
        pytest.skip("the default model is not in the cache (fetched by the native and parity suites)")
    return path


def test_loading_the_default_vocabulary_is_fast(default_model: Path) -> None:
    start = time.perf_counter()
    tok = Tokenizer.from_file(default_model)
    elapsed = time.perf_counter() - start
    assert (tok.n_vocab, len(tok._ranks)) == (49152, 48900)
    assert (tok.model, tok.pre) == ("gpt2", "smollm")
    assert elapsed < 1.0, f"loading took {elapsed:.2f} s"
    reader = gguf.GGUFReader(default_model)
    start = time.perf_counter()
    Tokenizer.from_gguf(reader)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"loading from a GGUFReader took {elapsed:.2f} s"


def test_encoding_10_kb_is_fast(default_model: Path) -> None:
    tok = Tokenizer.from_file(default_model)
    words = [
        "The",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "12345",
        "naïve",
        "日本語",
        "😀",
        "\n",
        "def",
        "x=1;",
    ]
    text = " ".join(words[(i * 7) % len(words)] + str(i) for i in range(1400))[:10_000]
    start = time.perf_counter()
    ids = tok.encode(text)
    elapsed = time.perf_counter() - start
    assert len(ids) > 2000
    assert tok.decode(ids) == text
    assert elapsed < 0.5, f"encoding 10 KB took {elapsed:.2f} s"
