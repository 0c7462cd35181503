"""Tokenizer parity: the reference tokenizer against llama.cpp, id for id and byte for byte.

The default model (SmolLM2: byte-level BPE with the "smollm" pre-tokenizer) is compared with
NativeModel: token ids for the whole corpus (parse_special off and on), detokenized text, and the
piece of every token. Every other supported pre-tokenizer, SentencePiece vocabularies and odd
vocabularies are compared on vocabulary-only GGUF files built from the default model's vocabulary,
which llama.cpp loads with ``vocab_only`` (a small ctypes wrapper below).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gguf
import pytest
from parity.corpus import SPECIAL, parity_corpus, random_token_sequences, random_unicode, small_corpus
from support.native import NATIVE_ONLY

from llambo.api import LoadParams
from llambo.native.library import load_library
from llambo.native.model import NativeModel
from llambo.reference.tokenizer import _BYTE_CHARS, SUPPORTED_PRE_TOKENIZERS, Tokenizer, _read_gguf_metadata

pytestmark = NATIVE_ONLY

N_VOCAB = 49152
N_MERGES = 48900
MAX_REPORTED = 10


class LlamaVocab:
    """A vocabulary loaded by llama.cpp alone (``vocab_only``), with the calls the tests compare."""

    def __init__(self, path: Path) -> None:
        self.lib = lib = load_library().lib
        params = lib.llama_model_default_params()
        params.vocab_only = True
        self.model = lib.llama_model_load_from_file(os.fsencode(path), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load the vocabulary {path}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab: int = lib.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None

    def _int_function(self, name: str) -> Any:
        function = self.lib[name]  # a new function object: the shared declarations stay untouched
        function.restype = ctypes.c_int32
        function.argtypes = [ctypes.c_void_p]
        return function

    def special(self, name: str) -> int | None:
        token: int = self._int_function(f"llama_vocab_{name}")(self.vocab)
        return None if token < 0 else token

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (ctypes.c_int32 * capacity)()
        count = self.lib.llama_tokenize(
            self.vocab, data, len(data), buffer, capacity, add_special, parse_special
        )
        assert count >= 0, f"llama_tokenize returned {count}"
        return list(buffer[:count])

    def detokenize(self, tokens: Sequence[int], remove_special: bool, unparse_special: bool) -> bytes:
        array = (ctypes.c_int32 * max(1, len(tokens)))(*tokens)
        capacity = 64 + 8 * len(tokens)
        for _ in range(2):
            buffer = ctypes.create_string_buffer(capacity)
            count = self.lib.llama_detokenize(
                self.vocab, array, len(tokens), buffer, capacity, remove_special, unparse_special
            )
            if count >= 0:
                return buffer.raw[:count]
            capacity = -count
        raise AssertionError(f"llama_detokenize returned {count}")

    def piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(1024)
        count = self.lib.llama_token_to_piece(self.vocab, token, buffer, 1024, 0, special)
        assert count >= 0, f"llama_token_to_piece returned {count} for {token}"
        return buffer.raw[:count]

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native(default_model_path: Path) -> Iterator[NativeModel]:
    model = NativeModel(default_model_path, LoadParams(n_ctx=256))
    yield model
    model.close()


@pytest.fixture(scope="module")
def native_vocab(default_model_path: Path) -> Iterator[LlamaVocab]:
    vocab = LlamaVocab(default_model_path)
    yield vocab
    vocab.close()


@pytest.fixture(scope="module")
def reference(default_model_path: Path) -> Tokenizer:
    return Tokenizer.from_file(default_model_path)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return parity_corpus()


@pytest.fixture(scope="module")
def vocabulary(default_model_path: Path) -> dict[str, Any]:
    """The default model's tokens, types and merges, as plain values."""
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    metadata = _read_gguf_metadata(str(default_model_path), frozenset(keys))
    return {
        "tokens": metadata[keys[0]],
        "token_type": [int(t) for t in metadata[keys[1]]],
        "merges": [merge.decode("utf-8") for merge in metadata[keys[2]]],
    }


def write_vocabulary(path: Path, model: str, tokens: Sequence[Any], **keys: Any) -> Path:
    """A GGUF file holding only a vocabulary (``keys`` name GGUFWriter ``add_*`` methods)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(list(tokens))
    for name, value in keys.items():
        if value is not None:
            getattr(writer, f"add_{name}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def compare_encoding(
    reference: Tokenizer, native: LlamaVocab, texts: Sequence[str], add_special: Sequence[bool] = (True,)
) -> list[str]:
    """Descriptions of the texts whose ids differ (empty when all agree)."""
    failures = []
    for text in texts:
        for special in add_special:
            for parse in (False, True):
                ours = reference.encode(text, add_special=special, parse_special=parse)
                theirs = native.tokenize(text, special, parse)
                if ours != theirs:
                    failures.append(
                        f"{text[:60]!r} add={special} parse={parse}: {ours[:12]} != {theirs[:12]}"
                    )
    return failures


def compare_decoding(
    reference: Tokenizer, native: LlamaVocab, sequences: Sequence[Sequence[int]]
) -> list[str]:
    failures = []
    for tokens in sequences:
        for remove in (False, True):
            for unparse in (False, True):
                ours = reference.decode_bytes(tokens, remove_special=remove, unparse_special=unparse)
                theirs = native.detokenize(tokens, remove, unparse)
                if ours != theirs:
                    head = list(tokens)[:12]
                    failures.append(
                        f"{head} remove={remove} unparse={unparse}: {ours[:40]!r} != {theirs[:40]!r}"
                    )
    return failures


def compare_vocabulary(reference: Tokenizer, native: LlamaVocab, pieces: bool = True) -> list[str]:
    """Pieces (both kinds, unless not ``pieces``), EOG membership and the special ids llama.cpp exposes."""
    failures = []
    assert reference.n_vocab == native.n_vocab
    for token in range(native.n_vocab):
        for special in (False, True) if pieces else ():
            if reference.token_piece(token, special=special) != native.piece(token, special):
                failures.append(f"piece of {token} (special={special})")
        if reference.is_eog(token) != native.is_eog(token):
            failures.append(f"is_eog({token})")
    for name in (
        "bos",
        "eos",
        "eot",
        "sep",
        "pad",
        "fim_pre",
        "fim_suf",
        "fim_mid",
        "fim_pad",
        "fim_rep",
        "fim_sep",
    ):
        if reference.special_tokens[name] != native.special(name):
            failures.append(f"{name}: {reference.special_tokens[name]} != {native.special(name)}")
    flags = (reference.add_bos, reference.add_eos)
    if flags != (
        native.lib.llama_vocab_get_add_bos(native.vocab),
        native.lib.llama_vocab_get_add_eos(native.vocab),
    ):
        failures.append(f"add_bos/add_eos {flags}")
    return failures


def check(failures: list[str], what: str) -> None:
    assert not failures, f"{len(failures)} {what} differ from llama.cpp, e.g.:\n" + "\n".join(
        failures[:MAX_REPORTED]
    )


# ---------------------------------------------------------------------------------------------
# The default model, through NativeModel
# ---------------------------------------------------------------------------------------------


def test_the_vocabulary_loads_like_llama_cpp(reference: Tokenizer, native: NativeModel) -> None:
    assert (reference.model, reference.pre) == ("gpt2", "smollm")
    assert reference.n_vocab == native.n_vocab == N_VOCAB
    assert len(reference._ranks) == N_MERGES
    assert (reference.add_bos, reference.add_eos) == (False, False)


def test_token_ids_match_on_the_corpus(reference: Tokenizer, native: NativeModel, corpus: list[str]) -> None:
    assert len(corpus) >= 300
    failures = []
    for text in corpus:
        for parse in (False, True):
            ours = reference.encode(text, parse_special=parse)
            theirs = native.tokenize(text, add_special=True, parse_special=parse)
            if ours != theirs:
                failures.append(f"{text[:60]!r} parse_special={parse}: {ours[:12]} != {theirs[:12]}")
    check(failures, "encodings")


def test_special_tokens_in_running_text(reference: Tokenizer, native: NativeModel) -> None:
    im_start, im_end, endoftext = 1, 2, 0
    assert [reference.token_text(t) for t in (im_start, im_end, endoftext)] == [
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
    ]
    chat = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = reference.encode(chat, parse_special=True)
    assert ids == native.tokenize(chat, add_special=True, parse_special=True)
    assert ids.count(im_start) == 2 and ids.count(im_end) == 1
    literal = reference.encode(chat, parse_special=False)
    assert im_start not in literal and im_end not in literal
    assert literal == native.tokenize(chat, add_special=True, parse_special=False)
    assert reference.encode("a<|endoftext|>b", parse_special=True)[1] == endoftext
    for text in SPECIAL:
        for parse in (False, True):
            assert reference.encode(text, parse_special=parse) == native.tokenize(
                text, parse_special=parse
            ), text


def test_detokenized_text_matches(reference: Tokenizer, native: NativeModel, corpus: list[str]) -> None:
    # SmolLM's vocabulary lacks a few byte tokens (0x1D, 0xF1, ...): llama.cpp drops those bytes,
    # so only texts without them must come back unchanged.
    missing = {b for b in range(256) if reference.token_id(_BYTE_CHARS[b]) is None}
    assert missing and len(missing) < 30
    failures = []
    for text in corpus:
        for parse in (False, True):
            ids = native.tokenize(text, add_special=True, parse_special=parse)
            for remove in (False, True):
                for unparse in (False, True):
                    ours = reference.decode(ids, remove_special=remove, unparse_special=unparse)
                    theirs = native.detokenize(ids, remove_special=remove, unparse_special=unparse)
                    if ours != theirs:
                        failures.append(f"{text[:60]!r} remove={remove} unparse={unparse}")
            if not parse and reference.decode(ids) != text and not missing & set(text.encode()):
                failures.append(f"{text[:60]!r} does not round-trip")
    check(failures, "decodings")


def test_random_token_sequences_detokenize_alike(reference: Tokenizer, native_vocab: LlamaVocab) -> None:
    check(
        compare_decoding(reference, native_vocab, random_token_sequences(N_VOCAB, 400, seed=3)), "decodings"
    )


def test_every_token_piece_matches(
    reference: Tokenizer, native: NativeModel, native_vocab: LlamaVocab
) -> None:
    failures = [str(t) for t in range(N_VOCAB) if reference.token_bytes(t) != native.token_bytes(t)]
    check(failures, "token_bytes")
    check(compare_vocabulary(reference, native_vocab), "pieces or special tokens")
    assert reference.eog_tokens == {t for t in range(N_VOCAB) if native.is_eog(t)} == {0, 2, 4}


def test_a_long_random_unicode_text(reference: Tokenizer, native: NativeModel) -> None:
    text = random_unicode(50_000, seed=99)
    ids = reference.encode(text)
    assert ids == native.tokenize(text)
    assert reference.decode(ids) == native.detokenize(ids)  # not the text: a few bytes have no token


# ---------------------------------------------------------------------------------------------
# The other pre-tokenizers, on the default model's vocabulary
# ---------------------------------------------------------------------------------------------

# These get the whole corpus; the rest share their regexes and get a cross-section.
FULL_CORPUS = {"default", "gpt-2", "llama3", "qwen2", "qwen35", "falcon", "laguna", "glm4", "command-r"}


@pytest.mark.slow
@pytest.mark.parametrize("pre", sorted(SUPPORTED_PRE_TOKENIZERS))
def test_pre_tokenizer(
    pre: str, vocabulary: dict[str, Any], corpus: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = write_vocabulary(
        tmp_path_factory.mktemp("pre") / f"{pre}.gguf",
        "gpt2",
        vocabulary["tokens"],
        token_types=vocabulary["token_type"],
        token_merges=vocabulary["merges"],
        tokenizer_pre=pre,
    )
    reference, native = Tokenizer.from_file(path), LlamaVocab(path)
    try:
        texts = corpus if pre in FULL_CORPUS else small_corpus()
        check(compare_encoding(reference, native, texts), f"{pre} encodings")
        check(
            compare_decoding(reference, native, random_token_sequences(N_VOCAB, 150, seed=5)),
            f"{pre} decodings",
        )
        # Pieces do not depend on the pre-tokenizer: checked in full for the main ones only.
        check(compare_vocabulary(reference, native, pieces=pre in FULL_CORPUS), f"{pre} special tokens")
    finally:
        native.close()


# ---------------------------------------------------------------------------------------------
# SentencePiece vocabularies and unusual byte-level ones
# ---------------------------------------------------------------------------------------------


def spm_vocabulary(vocabulary: dict[str, Any]) -> dict[str, Any]:
    """An SPM vocabulary from the default model's pieces: <unk>, <s>, </s>, 256 byte tokens, a few
    special tokens, then every piece that is valid UTF-8, spaces as U+2581, scored by rank."""
    reference_pieces: list[str] = []
    seen: set[str] = set()
    byte_level = Tokenizer.from_fields({**vocabulary, "model": "gpt2", "pre": "smollm"})
    for token in range(byte_level.n_vocab):
        try:
            piece = byte_level.token_bytes(token).decode("utf-8").replace(" ", "\u2581")
        except UnicodeDecodeError:
            continue
        if piece and piece not in seen:
            seen.add(piece)
            reference_pieces.append(piece)
    specials = {"<|user|>": 4, "<|end|>": 3, "<|assistant|>": 4, "<|endoftext|>": 3, "<mask>": 4}
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *specials, *reference_pieces]
    types = [2, 3, 3, *[6] * 256, *specials.values(), *[1] * len(reference_pieces)]
    scores = [0.0] * (259 + len(specials)) + [-float(i) for i in range(len(reference_pieces))]
    return {"tokens": tokens, "token_types": types, "token_scores": scores}


SPM_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "no-space-prefix-with-eos": {"add_space_prefix": False, "add_eos_token": True},
    "no-bos": {"add_bos_token": False},
    "phi-3": {"name": "Phi-3-mini-4k-instruct"},
}
SPM_TEXTS = [
    "<|user|>Hi there<|end|>\n<|assistant|>",
    " <|user|>  x  <|assistant|>  y",
    "<s>a</s>b<unk>",
    "<|endoftext|> after",
    "▁already▁escaped",
]


@pytest.mark.parametrize("variant", sorted(SPM_VARIANTS))
def test_sentencepiece_vocabulary(
    variant: str, vocabulary: dict[str, Any], corpus: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    spm = spm_vocabulary(vocabulary)
    path = write_vocabulary(
        tmp_path_factory.mktemp("spm") / f"{variant}.gguf", "llama", **spm, **SPM_VARIANTS[variant]
    )
    reference, native = Tokenizer.from_file(path), LlamaVocab(path)
    try:
        assert reference.model == "llama"
        texts = [*corpus, *SPM_TEXTS] if variant == "plain" else [*small_corpus(), *SPM_TEXTS]
        check(compare_encoding(reference, native, texts, add_special=(False, True)), "SPM encodings")
        sequences = [native.tokenize(t, True, True) for t in texts[::3]]
        sequences += random_token_sequences(native.n_vocab, 200, seed=11)
        check(compare_decoding(reference, native, sequences), "SPM decodings")
        check(compare_vocabulary(reference, native), "SPM pieces or special tokens")
    finally:
        native.close()


def odd_byte_level_vocabulary(vocabulary: dict[str, Any]) -> dict[str, Any]:
    """The default vocabulary, bent: user-defined, unused, undefined and byte-typed tokens,
    EOG-looking texts on normal tokens, a gpt-oss token, invalid UTF-8, merges to non-tokens."""
    tokens = list(vocabulary["tokens"])
    types = list(vocabulary["token_type"])
    types[3] = 4  # <repo_name>: user-defined, cut out even without parse_special
    types[5] = 5  # <file_sep>: unused
    types[6] = 0  # <filename>: undefined
    types[309] = 6  # "ation", typed as a byte token: <0x..> parsing of "on" gives 0x00
    tokens[40000], types[40000] = b"<|eom_id|>", 1  # EOG-looking, normal: becomes control
    tokens[40001], types[40001] = b"<|channel|>", 3  # always rendered (user-defined)
    tokens[40002], types[40002] = b"\xff\xfe\xc3", 1  # not UTF-8
    tokens[40003], types[40003] = b"<|fim_prefix|>", 1
    # "xq", "qx" and "Ġð" are no tokens: merged, they fall back to single bytes (non-ASCII ones vanish).
    merges = ["x q", "\u0120 \u00f0", "q x", "ab", *vocabulary["merges"]]
    return {"tokens": tokens, "token_types": types, "token_merges": merges}


BPE_VARIANTS: dict[str, dict[str, Any]] = {
    "odd-gpt2": {"tokenizer_pre": "gpt-2", "add_bos_token": True, "add_eos_token": True},
    "odd-llama3-prefix": {"tokenizer_pre": "llama3", "add_space_prefix": True, "eot_token_id": 2},
    "odd-phi3": {"tokenizer_pre": "smollm", "name": "phi-3 test", "bos_token_id": 60_000},
}


@pytest.mark.parametrize("variant", sorted(BPE_VARIANTS))
def test_unusual_byte_level_vocabulary(
    variant: str, vocabulary: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    odd = odd_byte_level_vocabulary(vocabulary)
    if variant == "odd-phi3":  # phi-3's rules need these four tokens
        for i, text in zip(
            (40010, 40011, 40012, 40013), (b"<unk>", b"<s>", b"</s>", b"<|user|>"), strict=True
        ):
            odd["tokens"][i], odd["token_types"][i] = text, 3
    path = write_vocabulary(
        tmp_path_factory.mktemp("odd") / f"{variant}.gguf", "gpt2", **odd, **BPE_VARIANTS[variant]
    )
    reference, native = Tokenizer.from_file(path), LlamaVocab(path)
    try:
        texts = [
            *small_corpus(),
            "xq qx \U0001f600 <repo_name>a<repo_name> <file_sep><filename>",
            "<|eom_id|> <|channel|> <|fim_prefix|> <|user|>  \n x<s> </s>",
            "ab abab",
        ]
        check(compare_encoding(reference, native, texts, add_special=(False, True)), f"{variant} encodings")
        sequences = [
            [40000, 40001, 40002, 40003, 3, 5, 6, 309, 0, 1, 2],
            *random_token_sequences(N_VOCAB, 200, 13),
        ]
        check(compare_decoding(reference, native, sequences), f"{variant} decodings")
        check(compare_vocabulary(reference, native), f"{variant} pieces or special tokens")
    finally:
        native.close()
