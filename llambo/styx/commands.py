"""The command language of ``/ctl`` and ``/clone``: rc-style words, and ``load`` with its options.

Parsing only: :mod:`.files` runs the commands, and ``llambo serve --load`` builds the same
:class:`LoadCommand` from the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..api import LoadParams
from ..selection import requested_backend
from .errors import invalid

__all__ = ["LoadCommand", "bool_word", "int_word", "parse_load", "quote", "tokenize"]

_LOAD_INTS = ("n_gpu_layers", "n_ctx", "n_batch", "n_threads")
_LOAD_BOOLS = ("use_mmap", "use_mlock")
_TRUE = frozenset({"1", "true", "yes", "on", "mmap"})
_FALSE = frozenset({"0", "false", "no", "off", "nommap"})


def tokenize(line: str) -> list[str]:
    """Split a command line into words; '...' quotes (with '' for a quote), as Plan 9's rc does."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t\r":
            i += 1
        if i >= n:
            break
        word: list[str] = []
        while i < n and line[i] not in " \t\r":
            if line[i] != "'":
                word.append(line[i])
                i += 1
                continue
            i += 1
            while True:
                if i >= n:
                    raise invalid("unterminated quote in the command")
                if line[i] == "'":
                    if i + 1 < n and line[i + 1] == "'":
                        word.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                word.append(line[i])
                i += 1
        words.append("".join(word))
    return words


def quote(word: str) -> str:
    """``word`` as :func:`tokenize` reads it back: quoted only if it must be."""
    if word and not any(c in word for c in " \t\r\n'"):
        return word
    return "'" + word.replace("'", "''") + "'"


def bool_word(name: str, word: str) -> bool:
    """A yes/no option word: 1/0, true/false, yes/no, on/off (or mmap/nommap)."""
    lowered = word.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise invalid(f"{name} must be true or false (1/0, yes/no, on/off), got {word!r}")


def int_word(name: str, word: str) -> int:
    """An integer option word; ``name`` says which in the error."""
    try:
        return int(word)
    except ValueError:
        raise invalid(f"{name} must be an integer, got {word!r}") from None


@dataclass(frozen=True)
class LoadCommand:
    """``load <path> [use_mmap] [n_gpu_layers] [name=value ...]`` once parsed."""

    path: str
    params: LoadParams
    backend: str | None  # None: the process default (LLAMBO_BACKEND, else auto)


def parse_load(words: list[str], defaults: LoadParams, backend: str | None) -> LoadCommand:
    """The arguments of a ``load`` command (``words[0]`` is ``load``)."""
    if len(words) < 2:
        raise invalid("usage: load <path> [use_mmap] [n_gpu_layers] [n_ctx=N n_threads=N ...]")
    changes: dict[str, Any] = {}
    positional = ("use_mmap", "n_gpu_layers")
    index = 0
    for word in words[2:]:
        name, eq, value = word.partition("=")
        if not eq:
            if index >= len(positional):
                raise invalid(f"too many arguments to load: {word!r}")
            name, value = positional[index], word
            index += 1
        if name in _LOAD_BOOLS:
            changes[name] = bool_word(name, value)
        elif name in _LOAD_INTS:
            changes[name] = int_word(name, value)
        elif name == "backend":
            try:
                requested_backend(value)
            except ValueError as exc:
                raise invalid(str(exc)) from None
            backend = value
        else:
            known = ", ".join((*_LOAD_BOOLS, *_LOAD_INTS, "backend"))
            raise invalid(f"unknown load option {name!r}; known: {known}")
    try:
        params = dataclasses.replace(defaults, **changes)
    except (TypeError, ValueError) as exc:
        raise invalid(str(exc)) from None
    return LoadCommand(words[1], params, backend)
