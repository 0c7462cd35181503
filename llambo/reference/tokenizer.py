"""Tokenizers built from a GGUF vocabulary alone that give the token ids llama.cpp gives.

Two of llama.cpp's tokenizer families are implemented, following ``src/llama-vocab.cpp`` and
``src/unicode.cpp`` of the pinned llama.cpp, quirks included:

* byte-level BPE (``tokenizer.ggml.model = "gpt2"``) with the pre-tokenizers named in
  :data:`SUPPORTED_PRE_TOKENIZERS`;
* SentencePiece-style BPE over token scores (``"llama"``), with ``<0xXX>`` byte fallback, spaces
  written as U+2581 and the leading-space prefix.

What llama.cpp does, and so what this module does:

* Text is first cut at special tokens: control, user-defined and unknown-type tokens, longest
  first, each over every remaining piece of text in turn. Without ``parse_special`` only the
  user-defined ones are cut out. A token with the lstrip/rstrip attribute (set by model name,
  e.g. phi-3) eats the ASCII whitespace beside it.
* Character classes (letter, number, whitespace, ...) come from llama.cpp's own Unicode table,
  embedded below, never from :mod:`unicodedata`, whose version changes with the interpreter.
  llama.cpp "collapses" every code point above U+007F to one byte per class (whitespace to
  U+000B) and runs its regexes on that; here every pre-tokenizer regex, including the ones
  llama.cpp implements by hand (GPT-2, Llama 3, Qwen 2), is a :mod:`re` pattern over the same
  collapsed bytes. Each regex of a pre-tokenizer splits the pieces the previous one left, so a
  piece never spans an earlier boundary (SmolLM's digits, split one by one first, never take
  the space before them).
* BPE merges the adjacent pair of lowest rank, leftmost first, one pair at a time; a symbol that
  is not a token is replaced by the tokens of its single UTF-8 bytes, which for byte-level
  vocabularies means it is dropped. ``ignore_merges`` pre-tokenizers (Llama 3) take a whole word
  that is a token as is.
* Pieces and detokenization: control and unknown tokens render as nothing unless asked for;
  user-defined tokens render as their text; ``clean_spaces`` vocabularies get llama.cpp's three
  passes (`` ?``, `` ' ``, `` 's``...), byte for byte.
* End-of-generation tokens: EOS, EOT, EOM, the FIM pad/repo/separator tokens and every token whose
  text is in llama.cpp's list (``<|im_end|>``, ``<|endoftext|>``, ``<end_of_turn>``, ...).

Where llama.cpp's choice depends on the iteration order of its hash map (which token becomes EOT
when several look like one, e.g. ``<|endoftext|>`` and ``<|im_end|>``), the lowest id is taken;
that is what llama.cpp picks for the default model. Special tokens of equal length that overlap in
a text are cut in id order, where llama.cpp's unstable sort leaves the order unspecified.
"""

from __future__ import annotations

import functools
import heapq
import logging
import mmap
import operator
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest, ModelLoadError

if TYPE_CHECKING:
    import gguf

__all__ = ["SUPPORTED_MODELS", "SUPPORTED_PRE_TOKENIZERS", "Tokenizer"]

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# llama.cpp's Unicode classes
# ---------------------------------------------------------------------------------------------

# The category of every code point from U+0080 up, from llama.cpp's unicode_ranges_flags
# (src/unicode-data.cpp): "<hex distance from the previous start><class>" per range, where the
# class is N(umber), L(etter), P(unctuation), M(ark), S(ymbol) or O(ther: separator, control,
# unassigned). Ranges run to U+10FFFF; tests/reference checks it against the C++ table.
_CATEGORY_RANGES: Final = (
    "80O21P1S5P1S2L1P1S1O1S4N2S1L1P2S1N1L1P1N3P1L17S1L1fS1L1caS4LcSeL5S7L1S1L1S11M70L5S1L2O2L4P1L1O"
    "4S2L1P1L3O1L1O1L14O1L53S1L8bS1M7La6O1L26O2L1P6L29P2O2S3O1M2dP1M1P1M2P1M2P1M1O8L1bO4L4P2O11S3P"
    "2S1P2S2MbP1O1P3L2bM15NaP4L2M1L63P1L1M7O1S1M6L2M2S1M4L2NaL3S2L1PeO2L1M1L1eM1bO2L59MbL1OeNaL21M"
    "9L2S1P3L1O2M1S2L16M4L1M9L1M3L1M5O2PfO1L19M3O2P1O1LbO5L18S1L6O9M8L2aM18O1M21L36M3L1M12L1M7LaM2P"
    "2NaP1L10M3O1L8O2L2O2L16O1L7O1L1O3L4O2M1L1M7O2M2O2M3L1O8M1O4L2O1L3M2O2NaL2S2N6S2L1P1M1O2M3O1L6O"
    "4L2O2L16O1L7O1L2O1L2O1L2O2M1O1M5O4M2O2M3O3M1O7L4O1L1O7NaM2L3M1P1OaM3O1L9O1L3O1L16O1L7O1L2O1L5O"
    "2M1L1M8O1M3O1M3O2L1OfL2M2O2NaP1S1O7L1M6O1M3O1L8O2L2O2L16O1L7O1L2O1L5O2M1L1M7O2M2O2M3O7M3O4L2O"
    "1L3M2O2NaS1L1N6OaM1L1O1L6O3L3O1L4O3L2O1L1O1L2O3L2O3L3O3LcO4M5O3M3O1M4O2L1O6M1OeNdS8O5M5L8O1L3O"
    "1L17O1L10O2M1L1M7O1M3O1M4O7M2O1L3O2L1O2L2M2O2NaO7P1N7S1L1M3P1L8O1L3O1L17O1LaO1L5O2M1L1M7O1M3O"
    "1M4O7M2O6L2O1L2M2O2NaO1L2M1OcM4L9O1L3O1L29M2L1M7O1M3O1M4L1S1O4L3M1N7L3M2O2N13S1L6O1M3O1L12O3L"
    "18O1L9O1L1O2L7O3M1O4M6O1M1O1M8O6NaO2M2P1OcL30M1L2M7O4S1L7M8P1NaP2O25L2O1L1O1L5O1L18O1L1O1LaM1L"
    "2M9L1O2L5O1L1O1M7O1NaO2L4O20L1S3PfS1P1S3M2S6N14S1M1S1M1S1M1P4M2L8O1L24O4M14P1M2L5MbO1M24O1S8M"
    "1S6O1S2P5S4P2O25L2bM14L1NaP6L6M4L4M3L1M3L2M7L3M4LdMcL1M1NaM4S2L26O1L1O5L1O2L2bP1L14dO1L4O2L7O"
    "1L1O1L4O2L29O1L4O2L21O1L4O2L7O1L1O1L4O2LfO1L39O1L4O2L43O2M3P9N14O3L10SaO6L56O2L6O2P1L26cS1P1L"
    "11O1L1aP2O3L4bP3N3L8O7L12M4O9L13M3P2O9L12M2OcLdO1L3O1M2OcL34M20P3L1P3S1L1M1O2NaO6NaO6PbM3O1M1N"
    "aO6L59O7L5M2L22M1L1O5L46OaL1fO1McO4McO4S1O3P2NaL1eO2L5ObL2cO4L1aO6NbO3S22L17M5O2P2L35MaO1M1dO"
    "2M1NaO6NaO6P7L1P6O2M1fO31M5L2fM11L8O3NaP7SaM9S9P2O1M3L1eMdL2NaL2cMeO8P4L24M14O3P5NaO3L3NaL24P"
    "2L9O7L2bO2L3P8O8M3P1M15L4M1L6M1L2M3L1O5Lc0M40L116O2L6O2L26O2L6O2L8O1L1O1L1O1L1O1L1fO2L35O1L7S"
    "1L1S3L3O1L7S3L4O2L6O1S3LdS3O2L3O1L7S2O11P18O8P14S1PdS1PcO11N1L1O2N6S3P2L1NaS3P2O1LdO3S21OfM21O"
    "fS2L1S4L1S2LaS1L1S3L5S6L1S1L1S1L1S1L4S1LbS2L4S5L5S4L1S1N33L2N5S2O4S178P4S1dP2SfcO19SbO15N3cS"
    "4eN16S268PeN1eS31P2S1fPaS193P16S3fP4S20P2S176O2S20O1S69Le5S6L4M3L2O5P4N1P2L26O1L1O5L1O2L38O7L"
    "1P1OeM1L17O9L7O1L7O1L7O1L7O1L7O1L7O1L7O1L7O1M20P2fL1P20S2PcO22S1aO1S59OcSd6O1aS10O1P3S1L2N1PaS"
    "2PcS1N9M6P1L5S2N3L2P1S2O1L56O2M2S2L3P1L5aP1L4O5L2bO1L5eO1S2N4SaL20S24ObS1L10S1fO1NaS1eN8S1NfS"
    "20NaS27NfS140L19c0S40L568dO3S37O9L2eP2L10dP3L10NaL2O14L2fM4P1MaP1L1fM2L46NaM2P6O8S17L9S2L67S2L"
    "40O5L2O1L1O1L5O18L10M1L3M1L4M1L17M5S4M1O3N6S4O6L34P4O8M2L32M12O8P2NaO6M12L6P3L1P1L2M1NaL1cM8P"
    "2L17MdObP1L1dO3M4L2fMePdO1L1NaO4P2L5M1LaNaL5O1L29MeO9L3M1L8M2O2NaO2P4L17S3L1M3L32M1L1M3L2M2L5M"
    "2L1M1L1O18L3P2LbM5P2L3M2OaL6O2L6O2L6O9L7O1L7O1L2bS1LeS2O4L73M8P1M2O2NaO6L2ba4OcL17O4L31O2104L"
    "16eO2L6aO26L7OcL5O5L1M1LaS1LdO1L5O1L1O1L2O1L2O1L6cS11O10L16bP2S10L40O2L36O7S1O20LcS4M10PaO6M"
    "10P23O1PeS1P1S3O1P1S1P2O4L5O1L87O4P3S1P6S1P4NaP2S3P2L1aP3S1P1S1L1aP1S1P1S1P7L59O3L6O2L6O2L6O2L"
    "3O3S7O1S7OdS2O2LcO1L1aO1L13O1L2O1LfO2LeO22L7bO5P3O4N2dO3S9N39S11N2S3O1SdO3S1O2fS2dM1O82L1dO3L"
    "31OfM1N1bO4L20N4O9L14N1L8N1O5L26M5O5L1eO1P1L24O4L8P1N5O2aL9eO2NaO6L24O4L24O4L28O8L34ObP1LbO1L"
    "fO1L7O1L2O1LbO1LfO1L7O1L2O43L137O9L16OaL8O18L6O1L2aO1L9O45L6O2L1O1L2cO1L2O3L1O2L17O1P1N8L17S2N"
    "7L1fO8N9O30L13O1L2O5N5L16N6O3P1L1aO5P1O40L38O4N2L2N10O2N2eL1M3O1M2O5M4L4O1L3O1L1dO2M3O4M1N9O7P"
    "9O7L1dN2P1L1dN3O20L8S1L1cM2O4N5P7O9L36O3P7L16O2N8L13O5N8L12O7P4OcN7O50L49O37L33OdL33O7N6L24M4O"
    "8NaO126N1fO1L2aO1M2P1O2L2O4bM3L1dNaL1O8L16MbN4P5O16L12M4P4O26L15N7O14L17O9M3L35MfP7O4N1eM1L2M"
    "2L1O9M4L2dMbP2O1P4M1OdL19O7NaO6M3L24MeO1NaP4L1M2L1O8L23M1P2L1O9M3L30MeL4P4M4P1M2NaL1P1L1P3O1N"
    "14ObL12O1L19McP6M1L2M1O3eL7O1L1O1L4O1LfO1LaP1O6L2fMcO5NaO6M4O1L8O2L2O2L16O1L7O1L2O1L5O1M2L1M7O"
    "2M2O2M3O2L1O6M1O5L5M2O2M7O3M5O8bL35M12L4P5NaP2O1P1M1L3O1eL30M14L2P1L1O8NaOa6L2fM7O2M9P17L4M2O"
    "22L30M11P3L1ObNaO6PdO13L2bMdL1P1O6NaO36L1bO2MfO4NcP3S1L7Ob9L2cMfP1O64L40N13OcL8O2L1O2L8O1L2O1L"
    "18M6O1M2O2M4L1M1L1M2P3O9NaO46L8O2L27M7O2M7L1P1L1M1O1bL1MaL28M7L1M4P8M1O8L1MbL2eM10P3L1P5OdL49O"
    "7PaOf6L9O1L25M8O1M8L1P5OaN1dO3P2L1eO2M16O1MeO49L7O1L2O1L26M6O3M1O1M2O1M7L1M1O8NaO6L6O1L2O1L20M"
    "5O1M2O1M5L1O7NaO136L13M4P2O7M2L1M1LdO1L22M7O3M5PdNaO56L1OfN15S1dOdP1L39aO66N6fO1P5ObLc4Oa4cL"
    "61P2OdL430O10M1L6MfOfaaL247O21b9L239O7L1fO1NaO4P2L4fO1NaO6L1eO2M5P1OaL30M7P5S4L4P1S1OaNaO1N7O"
    "1L15O5L13O2b0L40N17P4O65L4bO4M1L1M37O7M4LdO40L2P1L1M1ObM2OeL17f8O8L4d6O2aL9O22e7L4O1L7O1L2O1L"
    "123OfL1O1dL3O2L1OeL4O8L18cO904L6bO5LdO3L9O7LaO2S1M2P1O1260M2eO2M17O9S74O3cSf6OaS27O2S3cM5S3M6O"
    "8M8S2M7S1eM4S3dO15S42M3S1O7aN14OcN14OcS57O9N19O87L55O1L47O1L2O2L1O2L2O2L4O1LcO1L1O1L7O1L41O1L"
    "4O2L8O1L7O1L1cO1L4O1L5O1L1O3L7O1L154O2L19S1L19S1L1fS1L19S1L1fS1L19S1L1fS1L19S1L1fS1L19S1L8O2N"
    "32S200M37S4M32S8M1SeM1S2P5OfM5O1MfO450L1fO6L6Od5M7O1M11O2M7O1M2O1M5O5L3eO21M1O70L2dO3M7L7O2NaO"
    "4L1S1O140L1eM1O11L2cM4NaO5S1O1d0L1cM4NaO2e6L7O1L4O1L2O1LfO1Lc5O2N9M7O29L44M7L1O4NaO4P2O311N3bS"
    "1N3S1N4O4cN2dS1NfOc2L4O1L1bO1L2O1L1O2L1O1LaO1L4O1L1O1L1O6L1O4L1O1L1O1L1O1L3O1L2O1L1O2L1O1L1O1L"
    "1O1L1O1L1O1L2O1L1O2L4O1L7O1L4O1L4O1L1O1LaO1L11O5L3O1L5O1L11O34S2O10eS2cO4S64OcSfO2SfO1SfO1S25O"
    "aNdSa1O38S1dOdS2cO4S9O7S2OeS6O9aS3d8O4S11O3SdO3S77O4S5fO6ScO4S1OfScO4S38O8SaO6S28O8S1eO2S2O4eS"
    "154OcSeO2SdO3S9O7S2eO1S7O8SeO4S9O7S9O7S93O1S37O25NaO406La6e0O20L103aO6LdeO2L1682OeL1d31OfL26eO"
    "9a2L21eO5e2L134bO5L1060Oadd50Mf0O"
)

# llama.cpp's unicode_set_whitespace: what its \s and is_whitespace match.
_WHITESPACE: Final = (
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
)  # fmt: skip

# The byte a code point above U+007F collapses to (unicode_regex_split's text_collapsed); code
# points below U+0080 stay themselves.
_NUMBER, _LETTER, _PUNCTUATION, _MARK, _SYMBOL, _OTHER, _SPACE = 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD0, 0x0B
_CLASS_BYTES: Final = {"N": _NUMBER, "L": _LETTER, "P": _PUNCTUATION, "M": _MARK, "S": _SYMBOL, "O": _OTHER}
_MAX_CODEPOINT = 0x110000


@functools.cache
def _collapse_table() -> npt.NDArray[np.uint8]:
    """The collapsed byte of every code point (1.1 MB, built once on first use)."""
    table = np.empty(_MAX_CODEPOINT, dtype=np.uint8)
    table[:0x80] = np.arange(0x80, dtype=np.uint8)
    start = 0
    bounds: list[tuple[int, int]] = []
    for match in re.finditer(r"([0-9a-f]+)([NLPMSO])", _CATEGORY_RANGES):
        start += int(match.group(1), 16)
        bounds.append((start, _CLASS_BYTES[match.group(2)]))
    for (begin, value), (end, _) in zip(bounds, [*bounds[1:], (_MAX_CODEPOINT, 0)], strict=True):
        table[begin:end] = value
    table[[cp for cp in _WHITESPACE if cp >= 0x80]] = _SPACE
    return table


def _collapse(text: str) -> bytes:
    """``text`` with one byte per code point, as llama.cpp's regexes see it."""
    if text.isascii():
        return text.encode("ascii")
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    collapsed: bytes = _collapse_table()[codepoints].tobytes()
    return collapsed


# ---------------------------------------------------------------------------------------------
# The byte-level alphabet (GPT-2's bytes_to_unicode, as unicode_byte_to_utf8_map builds it)
# ---------------------------------------------------------------------------------------------


def _byte_alphabet() -> tuple[str, ...]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


_BYTE_CHARS: Final = _byte_alphabet()
_CHAR_BYTES: Final = {char: byte for byte, char in enumerate(_BYTE_CHARS)}
# str.translate table taking a latin-1 decoded byte string to its byte-level form.
_LATIN1_TO_BYTE_CHARS: Final = {byte: char for byte, char in enumerate(_BYTE_CHARS)}
# The vocabulary key of a single raw byte (invalid UTF-8 on its own above 0x7F).
_RAW_BYTE_KEYS: Final = tuple(bytes([b]).decode("utf-8", "surrogateescape") for b in range(256))
_SPM_SPACE: Final = "\u2581"

# ---------------------------------------------------------------------------------------------
# Pre-tokenizer regexes
# ---------------------------------------------------------------------------------------------

# llama.cpp's regex strings, verbatim (llm_tokenizer_bpe in llama-vocab.cpp).
_RX_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_RX_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RX_LLAMA3_ORIGINAL = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RX_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RX_QWEN35 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RX_NEWLINES = r"[^\n]+|[\n]+"

# llama.cpp implements these regexes by hand (unicode_regex_split_custom_*). Each hand-written
# splitter is the regex evaluated with llama.cpp's classes, so here it is that regex over the
# collapsed bytes: letters [A-Za-z\xd2], numbers [0-9\xd1], marks \xd4, whitespace [\t-\r ]
# (collapsed non-ASCII whitespace is \x0b). The contraction checks only ever compare ASCII
# letters (no other code point lowercases to s, t, m, d, r, e, v or l).
_WS, _L, _N, _M = rb"\t-\r ", rb"A-Za-z\xd2", rb"0-9\xd1", rb"\xd4"
_SPACES = rb"[" + _WS + rb"]*[\r\n]+|[" + _WS + rb"]+(?![^" + _WS + rb"])|[" + _WS + rb"]+"
_CONTRACTIONS_ANY_CASE = rb"'(?:[sStTmMdD]|[rR][eE]|[vV][eE]|[lL][lL])"
_CUSTOM_SPLITTERS: Final[dict[str, bytes]] = {
    _RX_GPT2: (
        rb"'(?:[stmd]|re|ve|ll)| ?[" + _L + rb"]+| ?[" + _N + rb"]+| ?[^" + _WS + _L + _N + rb"]+"
        rb"|[" + _WS + rb"]+(?![^" + _WS + rb"])|[" + _WS + rb"]+"
    ),
    _RX_LLAMA3: (
        _CONTRACTIONS_ANY_CASE + rb"|[^\r\n" + _L + _N + rb"]?[" + _L + rb"]+|[" + _N + rb"]{1,3}"
        rb"| ?[^" + _WS + _L + _N + rb"]+[\r\n]*|" + _SPACES
    ),
    _RX_QWEN2: (
        _CONTRACTIONS_ANY_CASE + rb"|[^\r\n" + _L + _N + rb"]?[" + _L + rb"]+|[" + _N + rb"]"
        rb"| ?[^" + _WS + _L + _N + rb"]+[\r\n]*|" + _SPACES
    ),
    _RX_QWEN35: (
        _CONTRACTIONS_ANY_CASE + rb"|[^\r\n" + _L + _N + rb"]?[" + _L + _M + rb"]+|[" + _N + rb"]"
        rb"| ?[^" + _WS + _L + _M + _N + rb"]+[\r\n]*|" + _SPACES
    ),
    _RX_NEWLINES: rb"[^\n]+|[\n]+",
}
_CUSTOM_SPLITTERS[_RX_LLAMA3_ORIGINAL] = _CUSTOM_SPLITTERS[_RX_LLAMA3]

# unicode_regex_split's replacement of \p{..} in the other regexes: the collapsed byte of the
# category plus its ASCII members.
_CATEGORY_CLASSES: Final = {
    r"\p{N}": "\xd10-9",
    r"\p{L}": "\xd2A-Za-z",
    r"\p{P}": "\xd3!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
    r"\p{M}": "\xd4",
    r"\p{S}": "\xd5\\$\\+<->^`\\|\\~",
    r"\p{Lu}": "\xd2A-Za-z",
    r"\p{Ll}": "\xd2A-Za-z",
    r"\p{Lt}": "\xd2A-Za-z",
    r"\p{Lm}": "\xd2A-Za-z",
    r"\p{Lo}": "\xd2A-Za-z",
}


def _collapsed_regex(expr: str) -> bytes:
    """``expr`` with each ``\\p{..}`` replaced by its collapsed class, as unicode_regex_split does."""
    out: list[str] = []
    inside = False
    i = 0
    while i < len(expr):
        char = expr[i]
        if char == "[" and (i == 0 or expr[i - 1] != "\\"):
            out.append("[")
            inside = True
        elif inside and char == "]" and expr[i - 1] != "\\":
            out.append("]")
            inside = False
        elif char == "\\" and i + 3 < len(expr) and expr[i + 1] == "p" and expr[i + 2] == "{":
            close = expr.find("}", i + 3)
            members = _CATEGORY_CLASSES.get(expr[i : close + 1]) if 0 <= close <= i + 10 else None
            if members is None:
                out.append(char)
            else:
                out.append(members if inside else f"[{members}]")
                i = close
        else:
            out.append(char)
        i += 1
    return "".join(out).encode("latin-1")


@functools.cache
def _compile(expr: str) -> re.Pattern[bytes]:
    """The pattern that splits collapsed text as llama.cpp splits with ``expr``."""
    custom = _CUSTOM_SPLITTERS.get(expr)
    if custom is not None:
        return re.compile(custom)
    if not expr.isascii():
        raise ValueError(f"regex with non-ASCII characters is not supported: {expr!r}")
    # llama.cpp runs a regex without \p{..} on the code points themselves (std::wregex); the only
    # such regex here, [0-9][0-9][0-9], sees the same ASCII digits in the collapsed text.
    return re.compile(_collapsed_regex(expr))


def _split(pattern: re.Pattern[bytes], data: bytes, pieces: list[int]) -> list[int]:
    """Split each piece (a length) at ``pattern``'s matches: matches and the gaps between them."""
    out: list[int] = []
    append = out.append
    start = 0
    whole = len(pieces) == 1
    for length in pieces:
        piece = data if whole else data[start : start + length]
        pos = 0
        for match in pattern.finditer(piece):
            begin, end = match.span()
            if begin > pos:
                append(begin - pos)
            if end > begin:
                append(end - begin)
            pos = end
        if pos < length:
            append(length - pos)
        start += length
    return out


# ---------------------------------------------------------------------------------------------
# Pre-tokenizers (tokenizer.ggml.pre)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pre:
    """What a ``tokenizer.ggml.pre`` value selects in llama.cpp."""

    regexes: tuple[str, ...]
    clean_spaces: bool = True
    ignore_merges: bool = False
    add_bos: bool = False
    no_bos: bool = False


_DEFAULT_REGEXES = (r"[\p{P}\$\+<=>\^~\|]+", _RX_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
_SMOLLM_REGEXES = (r"\p{N}", _RX_GPT2)
_FALCON_REGEXES = (r"[\p{P}\$\+<=>\^~\|`]+", _RX_GPT2, r"[0-9][0-9][0-9]")


def _pre_table() -> dict[str, _Pre]:
    table: dict[str, _Pre] = {"default": _Pre(_DEFAULT_REGEXES), "falcon": _Pre(_FALCON_REGEXES)}
    llama3 = _Pre((_RX_LLAMA3,), ignore_merges=True, add_bos=True)
    for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                 "jina-v5-nano"):  # fmt: skip
        table[name] = llama3
    table["dbrx"] = table["smaug-bpe"] = _Pre((_RX_LLAMA3,))
    table["chatglm-bpe"] = _Pre((_RX_LLAMA3,), no_bos=True)
    table["glm4"] = table["glm5"] = _Pre((_RX_LLAMA3,), ignore_merges=True, no_bos=True)
    for name in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                 "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais",
                 "exaone4"):  # fmt: skip
        table[name] = _Pre((_RX_GPT2,))
    table["trillion"] = table["granite-docling"] = _Pre((_RX_GPT2,), clean_spaces=False)
    for name in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"):
        table[name] = _Pre(_SMOLLM_REGEXES)
    table["smollm"] = table["command-r"] = _Pre(_SMOLLM_REGEXES, clean_spaces=False)
    for name in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"):
        table[name] = _Pre((_RX_QWEN2,), clean_spaces=False)
    table["stablelm2"] = table["megrez"] = _Pre((_RX_QWEN2,))
    table["qwen35"] = _Pre((_RX_QWEN35,), clean_spaces=False)
    table["laguna"] = _Pre((_RX_NEWLINES, _RX_QWEN2), clean_spaces=False)
    return table


_PRE_TOKENIZERS: Final = _pre_table()
SUPPORTED_PRE_TOKENIZERS: Final = frozenset(_PRE_TOKENIZERS)
"""The ``tokenizer.ggml.pre`` values this module implements (llama.cpp's names)."""

# Pre-tokenizers llama.cpp knows that are not implemented here (their regexes need more than the
# collapsed-class emulation, or they are not byte-level).
_NOT_IMPLEMENTED: Final = frozenset({
    "minicpm5", "deepseek-llm", "deepseek-coder", "deepseek-v3", "spark2_5", "youtu", "jais-2", "gemma4",
    "granite-embed-multi-311m", "sarvam-moe", "whitespace", "poro-chat", "viking", "tekken", "bloom",
    "gpt3-finnish", "exaone-moe", "chameleon", "gpt-4o", "llama4", "kanana2", "talkie",
    "granite-embed-multi-97m", "tiny_aya", "cohere2moe", "superbpe", "bailingmoe", "bailingmoe2",
    "llada-moe", "seed-coder", "hunyuan-dense", "hy_v4", "joyai-llm", "kimi-k2", "ufakzeka", "afmoe",
    "minimax-m2",
})  # fmt: skip

SUPPORTED_MODELS: Final = ("gpt2", "llama")
"""The ``tokenizer.ggml.model`` values implemented: byte-level BPE and SentencePiece-style BPE."""

# ---------------------------------------------------------------------------------------------
# Token types, attributes and special tokens (llama.h, llama-vocab.cpp)
# ---------------------------------------------------------------------------------------------

ATTR_UNDEFINED, ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL = 0, 1 << 0, 1 << 1, 1 << 2
ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_BYTE = 1 << 3, 1 << 4, 1 << 5
ATTR_LSTRIP, ATTR_RSTRIP = 1 << 7, 1 << 8
# GGUF token type -> llama_token_attr (types 0 and unknown values are UNDEFINED).
_TYPE_ATTRS: Final = {1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED, 5: ATTR_UNUSED,
                      6: ATTR_BYTE}  # fmt: skip
_SPECIAL_CUT = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN
_HIDDEN = ATTR_CONTROL | ATTR_UNKNOWN

SPECIAL_TOKEN_NAMES: Final = (
    "bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
    "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep",
)  # fmt: skip
# from_fields key -> the special token it sets, in llama.cpp's order (the deprecated
# prefix/suffix/middle keys come last and win).
_SPECIAL_KEYS: Final = {
    **{name: name for name in SPECIAL_TOKEN_NAMES},
    "prefix": "fim_pre",
    "suffix": "fim_suf",
    "middle": "fim_mid",
}
_GGUF_SPECIAL_KEYS: Final = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's spelling
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "fim_pre": "tokenizer.ggml.fim_pre_token_id",
    "fim_suf": "tokenizer.ggml.fim_suf_token_id",
    "fim_mid": "tokenizer.ggml.fim_mid_token_id",
    "fim_pad": "tokenizer.ggml.fim_pad_token_id",
    "fim_rep": "tokenizer.ggml.fim_rep_token_id",
    "fim_sep": "tokenizer.ggml.fim_sep_token_id",
    "prefix": "tokenizer.ggml.prefix_token_id",
    "suffix": "tokenizer.ggml.suffix_token_id",
    "middle": "tokenizer.ggml.middle_token_id",
}
_GGUF_KEYS: Final = {
    "tokens": "tokenizer.ggml.tokens",
    "token_type": "tokenizer.ggml.token_type",
    "scores": "tokenizer.ggml.scores",
    "merges": "tokenizer.ggml.merges",
    "model": "tokenizer.ggml.model",
    "pre": "tokenizer.ggml.pre",
    "add_bos": "tokenizer.ggml.add_bos_token",
    "add_eos": "tokenizer.ggml.add_eos_token",
    "add_sep": "tokenizer.ggml.add_sep_token",
    "add_space_prefix": "tokenizer.ggml.add_space_prefix",
    "name": "general.name",
    "arch": "general.architecture",
    **_GGUF_SPECIAL_KEYS,
}
_FIELDS: Final = frozenset(_GGUF_KEYS)

# Token texts llama.cpp recognises (llama_vocab::impl::load), first match by lowest id.
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_DETECTED: Final = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
            "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
                "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
                "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
                "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": _FIM_PAD_TEXTS,
    "fim_rep": _FIM_REP_TEXTS,
    "fim_sep": ("<|file_sep|>",),
}  # fmt: skip
_EOG_TEXTS: Final = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
})  # fmt: skip
_ALWAYS_RENDERED: Final = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})

_C_SPACES: Final = frozenset(" \t\n\v\f\r")  # isspace() in the C locale
_MAX_CACHED_WORD = 256


# ---------------------------------------------------------------------------------------------
# Reading the vocabulary
# ---------------------------------------------------------------------------------------------


def _text(value: str | bytes) -> str:
    """A GGUF string as llama.cpp keeps it: cut at the first NUL (it is read as a C string).

    Bytes that are not UTF-8 survive as surrogate escapes.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    return text.partition("\x00")[0]


def _llama_codepoints(data: bytes) -> list[int]:
    """Code points as unicode_cpts_from_utf8 reads them: no range checks, U+FFFD per bad byte."""
    out: list[int] = []
    i, n = 0, len(data)
    while i < n:
        lead = data[i]
        if lead < 0x80:
            out.append(lead)
            i += 1
            continue
        if lead & 0x40 == 0:
            size = 0
        elif lead & 0x20 == 0:
            size, value = 2, lead & 0x1F
        elif lead & 0x10 == 0:
            size, value = 3, lead & 0x0F
        elif lead & 0x08 == 0:
            size, value = 4, lead & 0x07
        else:
            size = 0
        if size and i + size - 1 < n and all(data[i + k] & 0xC0 == 0x80 for k in range(1, size)):
            for k in range(1, size):
                value = (value << 6) | (data[i + k] & 0x3F)
            out.append(value)
            i += size
        else:
            out.append(0xFFFD)
            i += 1
    return out


def _decode_byte_level(raw: bytes) -> bytes:
    """A byte-level token's bytes (llama_decode_text, with its ``[UNK_BYTE_0x..]`` for strays)."""
    try:
        codepoints = [ord(char) for char in raw.decode("utf-8")]
    except UnicodeDecodeError:
        codepoints = _llama_codepoints(raw)
    out = bytearray()
    for cp in codepoints:
        byte = _CHAR_BYTES.get(chr(cp))
        if byte is not None:
            out.append(byte)
        else:
            utf8 = chr(cp).encode("utf-8", "surrogatepass")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode("ascii") + raw + b"]"
    return bytes(out)


def _strtol_hex(data: bytes) -> int:
    """``strtol(data, NULL, 16)``: the leading hexadecimal number of ``data``, else 0."""
    match = re.match(rb"\s*([+-]?)(?:0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]*)", data)
    if match is None or not match.group(2):
        return 0
    value = int(match.group(2), 16)
    return -value if match.group(1) == b"-" else value


_RE_VE: Final = ((0x72, 0x65), (0x76, 0x65))  # "re", "ve"


def _clean_spaces(text: bytes) -> bytes:
    """llama.cpp's three clean-up passes of detokenize (``clean_spaces``), done in place as there."""
    buf = bytearray(text)
    space, quote = 0x20, 0x27
    # " ?", " !", " .", " ,": drop the space.
    size = len(buf)
    total = 1 if size else 0
    for i in range(1, size):
        x = buf[i]
        if buf[i - 1] == space and x in b"?!.,":
            total -= 1
        buf[total] = x
        total += 1
    # " ' ": drop both spaces.
    size = total
    total = 1 if size else 0
    i = 1
    while i < size:
        x = buf[i]
        if x == quote and i + 1 < size and buf[i - 1] == space and buf[i + 1] == space:
            total -= 1
            i += 1
            buf[i] = 0
        buf[total] = x
        total += 1
        i += 1
    # " 's", " 'm", " 're", " 've": drop the space.
    size = total
    total = 1 if size else 0
    for i in range(1, size):
        x = buf[i]
        if buf[i - 1] == space and x == quote and i + 1 < size:
            x1 = buf[i + 1]
            drop = x1 in b"sm" or (x1 not in b"td" and i + 2 < size and (x1, buf[i + 2]) in _RE_VE)
            if drop:
                total -= 1
        buf[total] = x
        total += 1
    return bytes(buf[:total])


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------


class Tokenizer:
    """A llama.cpp tokenizer rebuilt from a GGUF vocabulary (see the module docstring).

    Build it with :meth:`from_gguf`, :meth:`from_file` or :meth:`from_fields`. Instances are
    immutable apart from their caches and may be shared between threads.
    """

    model: str
    pre: str
    n_vocab: int
    add_bos: bool
    add_eos: bool
    add_sep: bool
    add_space_prefix: bool
    special_tokens: dict[str, int | None]

    def __init__(self, fields: Mapping[str, Any]) -> None:
        unknown = set(fields) - _FIELDS
        if unknown:
            raise TypeError(f"unknown tokenizer fields {sorted(unknown)}; expected some of {sorted(_FIELDS)}")
        self.model = _text(fields.get("model") or "")
        if self.model not in SUPPORTED_MODELS:
            raise ModelLoadError(
                f"tokenizer model {self.model!r} is not supported by the reference tokenizer "
                f"(supported: {', '.join(SUPPORTED_MODELS)})"
            )
        self._bpe = self.model == "gpt2"
        self.pre = _text(fields.get("pre") or "")
        self._load_tokens(fields)
        if self._bpe:
            self._load_merges(fields.get("merges"))
            pre = self._pre_tokenizer()
            self._regexes = tuple(_compile(expr) for expr in pre.regexes)
            self._clean = pre.clean_spaces
            self._ignore_merges = pre.ignore_merges
            self.add_bos, self.add_eos, self.add_space_prefix = pre.add_bos, False, False
            defaults: dict[str, int | None] = {"bos": None if pre.no_bos else 11, "eos": 11}
        else:
            self._ranks: dict[tuple[str, str], int] = {}
            self._regexes = ()
            self._clean = self._ignore_merges = False
            self.add_bos, self.add_eos, self.add_space_prefix = True, False, True
            defaults = {"bos": 1, "eos": 2, "unk": 0}
        self.add_sep = False
        self._load_flags(fields)
        self._load_special_tokens(fields, defaults)
        self._detect_special_tokens()
        self._set_strip_attributes(_text(fields.get("name") or ""), _text(fields.get("arch") or ""))
        self._pieces: list[bytes | None] = [None] * self.n_vocab
        self._cached_word: Callable[[str], tuple[int, ...]] = functools.lru_cache(maxsize=1 << 16)(
            self._bpe_word
        )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Tokenizer:
        """Build from plain values; a missing key (or None) is a key missing from the GGUF file.

        Keys: ``tokens`` (str or bytes), ``token_type`` (GGUF token types), ``scores``,
        ``merges`` ("left right" strings), ``model`` ("gpt2" or "llama"), ``pre``, ``add_bos``,
        ``add_eos``, ``add_sep``, ``add_space_prefix``, ``name`` and ``arch`` (general.name and
        general.architecture, which select per-token strip attributes), and the special token
        ids ``bos``, ``eos``, ``eot``, ``eom``, ``unk``, ``sep``, ``pad``, ``mask``, ``fim_pre``,
        ``fim_suf``, ``fim_mid``, ``fim_pad``, ``fim_rep``, ``fim_sep`` (and the deprecated
        ``prefix``, ``suffix``, ``middle``). Ids out of range are ignored, as llama.cpp does.
        """
        return cls(fields)

    @classmethod
    def from_gguf(cls, reader: gguf.GGUFReader) -> Tokenizer:
        """Build from an open ``gguf.GGUFReader`` (its fields are read directly, not via contents())."""
        values: dict[str, Any] = {}
        for name, key in _GGUF_KEYS.items():
            field = reader.fields.get(key)
            if field is not None:
                values[name] = _reader_value(field)
        return cls(values)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Build from a GGUF file, reading only its metadata (much faster than a GGUFReader)."""
        metadata = _read_gguf_metadata(os.fspath(path), frozenset(_GGUF_KEYS.values()))
        return cls({name: metadata[key] for name, key in _GGUF_KEYS.items() if key in metadata})

    def _load_tokens(self, fields: Mapping[str, Any]) -> None:
        tokens = fields.get("tokens")
        if not tokens:
            raise ModelLoadError("the vocabulary has no tokens (tokenizer.ggml.tokens)")
        texts = [_text(token) or f"[EMPTY_{i}]" for i, token in enumerate(tokens)]
        self.n_vocab = n = len(texts)
        self._texts = texts
        self._ids = {text: i for i, text in enumerate(texts)}
        if len(self._ids) != n:
            raise ModelLoadError("the vocabulary has duplicate tokens (llama.cpp refuses it too)")
        types = fields.get("token_type")
        if types is None:
            self._attrs = [ATTR_NORMAL] * n
        else:
            types = [int(t) for t in types]
            if len(types) < n:
                raise ModelLoadError(f"{len(types)} token types for {n} tokens")
            self._attrs = [_TYPE_ATTRS.get(t, ATTR_UNDEFINED) for t in types[:n]]
        scores = fields.get("scores")
        if scores is None:
            self._scores = [0.0] * n
        else:
            self._scores = [float(s) for s in scores]
            if len(self._scores) < n:
                raise ModelLoadError(f"{len(self._scores)} token scores for {n} tokens")

    def _load_merges(self, merges: Iterable[str | bytes] | None) -> None:
        if merges is None:
            raise ModelLoadError("cannot find tokenizer merges (tokenizer.ggml.merges) in a BPE vocabulary")
        ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(merges):
            text = _text(merge)
            cut = text.find(" ", 1)
            pair = (text[:cut], text[cut + 1 :]) if cut >= 0 else ("", "")
            ranks.setdefault(pair, rank)
        self._ranks = ranks

    def _pre_tokenizer(self) -> _Pre:
        if not self.pre:
            _log.warning("the vocabulary names no pre-tokenizer; using llama.cpp's 'default'")
            return _PRE_TOKENIZERS["default"]
        pre = _PRE_TOKENIZERS.get(self.pre)
        if pre is not None:
            return pre
        supported = ", ".join(sorted(SUPPORTED_PRE_TOKENIZERS))
        if self.pre in _NOT_IMPLEMENTED:
            raise ModelLoadError(
                f"the pre-tokenizer {self.pre!r} (tokenizer.ggml.pre) is not implemented by the reference "
                f"tokenizer; supported: {supported}"
            )
        raise ModelLoadError(
            f"unknown pre-tokenizer {self.pre!r} (tokenizer.ggml.pre), which llama.cpp rejects too; "
            f"supported: {supported}"
        )

    def _load_flags(self, fields: Mapping[str, Any]) -> None:
        for name in ("add_space_prefix", "add_bos", "add_eos", "add_sep"):
            value = fields.get(name)
            if value is not None:
                setattr(self, name, bool(value))

    def _load_special_tokens(self, fields: Mapping[str, Any], defaults: Mapping[str, int | None]) -> None:
        n = self.n_vocab
        special: dict[str, int | None] = {name: defaults.get(name) for name in SPECIAL_TOKEN_NAMES}
        for key, name in _SPECIAL_KEYS.items():
            current = special[name]
            if current is not None and current >= n:
                special[name] = current = None
            value = fields.get(key)
            if value is not None and 0 <= int(value) < n:  # a bad id keeps the default
                special[name] = int(value)
        self.special_tokens = special

    def _detect_special_tokens(self) -> None:
        """llama.cpp's token-text heuristics: EOT/EOM/FIM ids, unused tokens, the EOG set."""
        special, attrs, ids = self.special_tokens, self._attrs, self._ids
        for name, candidates in _DETECTED.items():
            if special[name] is None:
                found = [ids[text] for text in candidates if text in ids]
                if found:
                    special[name] = token = min(found)
                    attrs[token] |= ATTR_CONTROL
        for token, text in enumerate(self._texts):
            if attrs[token] & ATTR_CONTROL and "unused" in text:
                attrs[token] |= ATTR_UNUSED
        eog = {t for t in (special["fim_pad"], special["fim_rep"], special["fim_sep"]) if t is not None}
        for text in _EOG_TEXTS:
            found_id = ids.get(text)
            if found_id is not None:
                eog.add(found_id)
                attrs[found_id] |= ATTR_CONTROL
        for text in _ALWAYS_RENDERED:
            if text in ids:
                attrs[ids[text]] = ATTR_USER_DEFINED
        eog |= {t for t in (special["eos"], special["eot"], special["eom"]) if t is not None}
        texts = {self._texts[token]: token for token in eog}
        has_call = "<|call|>" in texts or "<|calls|>" in texts
        if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            attrs[texts["</s>"]] = ATTR_NORMAL
        self._eog = frozenset(eog)
        specials = [token for token, attr in enumerate(attrs) if attr & _SPECIAL_CUT]
        specials.sort(key=lambda token: -len(self._texts[token].encode("utf-8", "surrogateescape")))
        self._specials = specials

    def _set_strip_attributes(self, name: str, arch: str) -> None:
        """The lstrip/rstrip attributes llama.cpp sets by model, tokenizer or architecture name."""
        name = name.encode("utf-8", "surrogateescape").lower().decode("utf-8", "surrogateescape")

        def mark(text: str, attr: int, value: bool) -> None:
            token = self._ids.get(text)
            if token is None:
                raise ModelLoadError(f"the vocabulary lacks {text!r}, which llama.cpp needs for this model")
            self._attrs[token] = self._attrs[token] | attr if value else self._attrs[token] & ~attr

        if any(s in self.pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
            s in arch for s in ("nomic-bert-moe", "jina-bert-v3")
        ):
            if "<mask>" in self._ids:
                mark("<mask>", ATTR_LSTRIP, True)
        elif "phi-3" in name or "phi3" in name:
            for token in self._specials:
                self._attrs[token] |= ATTR_RSTRIP
            mark("</s>", ATTR_RSTRIP, True)
            for text in ("<unk>", "<s>", "<|endoftext|>"):
                mark(text, ATTR_RSTRIP, False)
        elif "modern-bert" in name and "[MASK]" in self._ids:
            mark("[MASK]", ATTR_LSTRIP, True)

    # -- queries --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<Tokenizer {self.model}/{self.pre or 'default'} n_vocab={self.n_vocab}>"

    def _check(self, token: int) -> int:
        if not 0 <= token < self.n_vocab:
            raise InvalidRequest(f"token id {token} out of range [0, {self.n_vocab})")
        return token

    def token_text(self, token: int) -> str:
        """The token's text as stored in the vocabulary (byte-level form for BPE)."""
        return self._texts[self._check(token)]

    def token_attr(self, token: int) -> int:
        """The token's ``llama_token_attr`` bits (``ATTR_*``), as llama.cpp computes them."""
        return self._attrs[self._check(token)]

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly ``text``, or None."""
        return self._ids.get(text)

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation (``llama_vocab_is_eog``)."""
        return token in self._eog

    @property
    def eog_tokens(self) -> frozenset[int]:
        """Every end-of-generation token id."""
        return self._eog

    def is_control(self, token: int) -> bool:
        """Whether ``token`` is a control token (``llama_vocab_is_control``)."""
        return bool(self.token_attr(token) & ATTR_CONTROL)

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text to token ids, as ``llama_tokenize`` gives them.

        ``add_special`` adds BOS/EOS where the vocabulary asks for them; ``parse_special`` lets
        control tokens written in the text (``<|im_start|>``) become those tokens.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        text.encode("utf-8")  # lone surrogates cannot reach llama.cpp either
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self._required("bos"))
        fragments = self._partition(text, parse_special)
        if self._bpe:
            for fragment in fragments:
                if isinstance(fragment, int):
                    out.append(fragment)
                else:
                    self._encode_bpe(fragment, out)
        else:
            after_special = True  # the first fragment gets the space prefix too
            for fragment in fragments:
                if isinstance(fragment, int):
                    out.append(fragment)
                    after_special = True
                else:
                    if self.add_space_prefix and after_special:
                        fragment = " " + fragment
                    self._encode_spm(fragment.replace(" ", _SPM_SPACE), out)
                    after_special = False
        if add_special and self.add_eos:
            out.append(self._required("eos"))
        return out

    def _required(self, name: str) -> int:
        token = self.special_tokens[name]
        if token is None:
            raise ModelLoadError(f"the vocabulary asks for a {name.upper()} token but has none")
        return token

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut ``text`` at special tokens (tokenizer_st_partition): text pieces and token ids."""
        fragments: list[str | int] = [text] if text else []
        attrs, texts = self._attrs, self._texts
        for token in self._specials:
            attr = attrs[token]
            if not parse_special and attr & _HIDDEN:
                continue
            special = texts[token]
            if not any(isinstance(f, str) and special in f for f in fragments):
                continue
            lstrip, rstrip = attr & ATTR_LSTRIP, attr & ATTR_RSTRIP
            cut: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    cut.append(fragment)
                    continue
                start, end = 0, len(fragment)
                while (found := fragment.find(special, start, end)) >= 0:
                    left = found
                    if lstrip:
                        while left > start and fragment[left - 1] in _C_SPACES:
                            left -= 1
                    if left > start:
                        cut.append(fragment[start:left])
                    cut.append(token)
                    start = found + len(special)
                    if rstrip:
                        while start < end and fragment[start] in _C_SPACES:
                            start += 1
                if start < end:
                    cut.append(fragment[start:end])
            fragments = cut
        return fragments

    def pre_tokenize(self, text: str) -> list[str]:
        """The words a BPE vocabulary's pre-tokenizer cuts ``text`` into (no special-token cut)."""
        if not self._bpe:
            raise InvalidRequest("SentencePiece vocabularies have no pre-tokenizer")
        data = _collapse(text)
        lengths = [len(data)] if data else []
        for pattern in self._regexes:
            lengths = _split(pattern, data, lengths)
        words = []
        pos = 0
        for length in lengths:
            words.append(text[pos : pos + length])
            pos += length
        return words

    def _encode_bpe(self, text: str, out: list[int]) -> None:
        cached, uncached = self._cached_word, self._bpe_word
        for word in self.pre_tokenize(text):
            out.extend(cached(word) if len(word) <= _MAX_CACHED_WORD else uncached(word))

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """One pre-tokenized word through byte-level BPE (llm_tokenizer_bpe_session)."""
        encoded = word.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)
        ids = self._ids
        if self._ignore_merges:
            whole = ids.get(encoded)
            if whole is not None:
                return (whole,)
        symbols = list(encoded)
        if len(symbols) > 1:
            self._merge(symbols)
        out: list[int] = []
        for symbol in symbols:
            if not symbol:
                continue
            token = ids.get(symbol)
            if token is not None:
                out.append(token)
                continue
            for byte in symbol.encode("utf-8"):  # a symbol that is no token: its single bytes
                token = ids.get(_RAW_BYTE_KEYS[byte])
                if token is not None:
                    out.append(token)
        return tuple(out)

    def _merge(self, symbols: list[str]) -> None:
        """Apply merges in place, lowest rank then leftmost first; merged-away symbols become ""."""
        ranks = self._ranks
        n = len(symbols)
        heap: list[tuple[int, int, int, str]] = []
        for i in range(n - 1):
            pair = (symbols[i], symbols[i + 1])
            rank = ranks.get(pair)
            if rank is not None:
                heap.append((rank, i, i + 1, pair[0] + pair[1]))
        if not heap:
            return
        heapq.heapify(heap)
        prev = list(range(-1, n - 1))
        nxt = [*range(1, n), -1]
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, merged = pop(heap)
            a, b = symbols[left], symbols[right]
            if not a or not b or a + b != merged:
                continue  # outdated
            symbols[left] = merged
            symbols[right] = ""
            after = nxt[left] = nxt[right]
            if after >= 0:
                prev[after] = left
                rank = ranks.get((merged, symbols[after]))
                if rank is not None:
                    push(heap, (rank, left, after, merged + symbols[after]))
            before = prev[left]
            if before >= 0:
                rank = ranks.get((symbols[before], merged))
                if rank is not None:
                    push(heap, (rank, before, left, symbols[before] + merged))

    def _encode_spm(self, text: str, out: list[int]) -> None:
        """SentencePiece-style BPE over scores (llm_tokenizer_spm_session)."""
        symbols = list(text)
        n = len(symbols)
        ids, scores = self._ids, self._scores
        heap: list[tuple[float, int, int, int]] = []

        def bigram(left: int, right: int) -> None:
            merged = symbols[left] + symbols[right]
            token = ids.get(merged)
            if token is not None:
                heapq.heappush(heap, (-scores[token], left, right, len(merged)))

        for i in range(1, n):
            bigram(i - 1, i)
        prev = list(range(-1, n - 1))
        nxt = [*range(1, n), -1]
        while heap:
            _, left, right, size = heapq.heappop(heap)
            a, b = symbols[left], symbols[right]
            if not a or not b or len(a) + len(b) != size:
                continue  # one of them was merged since
            symbols[left] = a + b
            symbols[right] = ""
            after = nxt[left] = nxt[right]
            if after >= 0:
                prev[after] = left
            if prev[left] >= 0:
                bigram(prev[left], left)
            if after >= 0:
                bigram(left, after)
        # Every merged symbol is a token; a single character that is not one falls back to bytes.
        for symbol in symbols:
            if not symbol:
                continue
            token = ids.get(symbol)
            if token is not None:
                out.append(token)
            else:
                out.extend(self._spm_byte_token(byte) for byte in symbol.encode("utf-8"))

    def _spm_byte_token(self, byte: int) -> int:
        token = self._ids.get(f"<0x{byte:02X}>")
        if token is None:
            token = self._ids.get(_RAW_BYTE_KEYS[byte])
        if token is None:
            raise InvalidRequest(f"the vocabulary has no token for byte 0x{byte:02X} (no <0x{byte:02X}>)")
        return token

    # -- decoding -----------------------------------------------------------------------------

    def token_piece(self, token: int, *, special: bool) -> bytes:
        """The bytes ``llama_token_to_piece`` gives for ``token`` (no lstrip).

        Control and unknown tokens give ``b""`` unless ``special``; user-defined tokens give
        their text; normal tokens their bytes; byte tokens their byte.
        """
        attr = self._attrs[self._check(token)]
        if not special and attr & _HIDDEN:
            return b""
        piece = self._pieces[token]
        if piece is None:
            piece = self._pieces[token] = self._make_piece(token)
        return piece

    def token_bytes(self, token: int) -> bytes:
        """What the token adds to generated text: ``token_piece(token, special=False)``."""
        return self.token_piece(token, special=False)

    def _make_piece(self, token: int) -> bytes:
        attr = self._attrs[token]
        raw = self._texts[token].encode("utf-8", "surrogateescape")
        if attr & _SPECIAL_CUT:
            return raw
        if attr & ATTR_NORMAL:
            return _decode_byte_level(raw) if self._bpe else raw.replace(_SPM_SPACE.encode(), b" ")
        if attr & ATTR_BYTE:
            return bytes([_strtol_hex(raw[3:5]) & 0xFF])
        return b""

    def decode_bytes(
        self, tokens: Sequence[int], *, remove_special: bool = False, unparse_special: bool = False
    ) -> bytes:
        """The bytes ``llama_detokenize`` writes for ``tokens``."""
        ids = [self._check(operator.index(t)) for t in tokens]
        strip_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.special_tokens["bos"]:
            strip_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.special_tokens["eos"]:
            ids = ids[:-1]
        pieces = [self.token_piece(t, special=unparse_special) for t in ids]
        if strip_space and pieces and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        text = b"".join(pieces)
        return _clean_spaces(text) if self._clean else text

    def decode(
        self, tokens: Sequence[int], *, remove_special: bool = False, unparse_special: bool = False
    ) -> str:
        """Token ids to text, as ``llama_detokenize`` renders them (invalid UTF-8 becomes U+FFFD).

        ``remove_special`` drops a leading BOS and trailing EOS the vocabulary adds;
        ``unparse_special`` renders control tokens as their text.
        """
        data = self.decode_bytes(tokens, remove_special=remove_special, unparse_special=unparse_special)
        return data.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# GGUF metadata
# ---------------------------------------------------------------------------------------------


def _reader_value(field: Any) -> Any:
    """A GGUFReader field as a plain value: strings as bytes, numeric arrays as numpy arrays."""
    types = [int(t) for t in field.types]
    parts = field.parts
    if types[0] == _GGUF_ARRAY:
        if types[-1] == _GGUF_STRING:
            return [parts[i].tobytes() for i in field.data]
        if not field.data:
            return np.empty(0)
        return np.concatenate([parts[i] for i in field.data])
    if types[0] == _GGUF_STRING:
        return parts[-1].tobytes()
    return parts[-1].tolist()[0]


_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_SCALARS: Final = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
    12: "<f8",
}  # fmt: skip
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _read_gguf_metadata(path: str, wanted: frozenset[str]) -> dict[str, Any]:
    """The ``wanted`` key/values of a GGUF file (v2 or v3), parsing nothing past the metadata."""
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_metadata(memoryview(data), wanted, path)
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise ModelLoadError(f"no GGUF file at {path}") from None
        raise ModelLoadError(f"cannot read the GGUF metadata of {path}: {exc}") from None


def _parse_metadata(data: memoryview, wanted: frozenset[str], path: str) -> dict[str, Any]:
    try:
        magic, version, _, n_kv = struct.unpack_from("<4sIQQ", data, 0)
        if magic != b"GGUF" or version not in (2, 3):
            raise ModelLoadError(f"{path} is not a little-endian GGUF v2/v3 file")
        offset = 24
        values: dict[str, Any] = {}
        for _ in range(n_kv):
            (size,) = _U64.unpack_from(data, offset)
            key = bytes(data[offset + 8 : offset + 8 + size]).decode("utf-8", "replace")
            offset += 8 + size
            (kind,) = _U32.unpack_from(data, offset)
            value, offset = _parse_value(data, offset + 4, kind, key in wanted)
            if key in wanted:
                values[key] = value
        return values
    except (struct.error, IndexError, KeyError) as exc:
        raise ModelLoadError(f"{path} has corrupt or truncated metadata ({exc})") from None
    finally:
        data.release()


def _parse_value(data: memoryview, offset: int, kind: int, keep: bool) -> tuple[Any, int]:
    """One GGUF value at ``offset``: (the value, or None when not kept; the offset after it)."""
    if kind == _GGUF_STRING:
        (size,) = _U64.unpack_from(data, offset)
        end = offset + 8 + size
        if end > len(data):
            raise IndexError("a string past the end of the file")
        return (bytes(data[offset + 8 : end]) if keep else None), end
    if kind == _GGUF_ARRAY:
        (item_kind,) = _U32.unpack_from(data, offset)
        (count,) = _U64.unpack_from(data, offset + 4)
        offset += 12
        if item_kind == _GGUF_STRING:
            strings: list[bytes] = []
            unpack = _U64.unpack_from
            for _ in range(count):
                (size,) = unpack(data, offset)
                end = offset + 8 + size
                if end > len(data):
                    raise IndexError("a string past the end of the file")
                if keep:
                    strings.append(bytes(data[offset + 8 : end]))
                offset = end
            return (strings if keep else None), offset
        if item_kind == _GGUF_ARRAY:
            items = []
            for _ in range(count):
                item, offset = _parse_value(data, offset, item_kind, keep)
                items.append(item)
            return (items if keep else None), offset
        dtype = np.dtype(_GGUF_SCALARS[item_kind])
        end = offset + dtype.itemsize * count
        if end > len(data):
            raise IndexError("array past the end of the file")
        array = np.frombuffer(data[offset:end], dtype=dtype).copy() if keep else None
        return array, end
    dtype = np.dtype(_GGUF_SCALARS[kind])
    value = np.frombuffer(data[offset : offset + dtype.itemsize], dtype=dtype)[0].item()
    return (bool(value) if kind == 7 else value), offset + dtype.itemsize
