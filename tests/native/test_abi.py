"""The ctypes mirror in ``llambo.native.llama_h`` against the pinned ``llama.h``.

Everything checked here is discovered from the mirror itself, so a struct, field, enum, constant
or function added to it is checked without touching this file:

* against the header's text (always): every function is declared, with the same parameter and
  return types; every struct has the same fields in the same order with the same types; every
  enum has the header's members;
* with a C compiler (skipped only when there is none): a small program generated from the mirror,
  compiled against the header, prints every struct's size and alignment, every field's offset and
  size, and the value of every enum member and constant, which must equal ctypes' own.

The shared library is never loaded here.
"""

from __future__ import annotations

import ctypes
import enum
import os
import re
import shlex
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from llambo.native import llama_h

# ---------------------------------------------------------------------------------------------
# What the mirror declares
# ---------------------------------------------------------------------------------------------


def _module_classes(base: type) -> list[type]:
    return [
        obj
        for obj in vars(llama_h).values()
        if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == llama_h.__name__
    ]


STRUCTS: list[type[ctypes.Structure]] = _module_classes(ctypes.Structure)
ENUMS: list[type[enum.IntEnum]] = _module_classes(enum.IntEnum)
CONSTANTS: dict[str, int] = {
    name: value
    for name, value in vars(llama_h).items()
    if re.fullmatch(r"(LLAMA|GGML)_[A-Z0-9_]+", name) and type(value) is int
}

# Enums the mirror holds only part of, on purpose.
PARTIAL_ENUMS = {"ggml_type"}


def test_the_mirror_is_not_empty() -> None:
    assert len(STRUCTS) >= 8
    assert len(ENUMS) >= 5
    assert "LLAMA_DEFAULT_SEED" in CONSTANTS
    assert len(llama_h.FUNCTIONS) >= 70


# ---------------------------------------------------------------------------------------------
# Reading the header
# ---------------------------------------------------------------------------------------------

_COMMENT_OR_STRING = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)


def _strip_comments(text: str) -> str:
    return _COMMENT_OR_STRING.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", text)


@pytest.fixture(scope="session")
def llama_header(llama_source_dir: Path) -> str:
    """``llama.h`` without its comments."""
    return _strip_comments((llama_source_dir / "include" / "llama.h").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def all_headers(llama_source_dir: Path, llama_header: str) -> str:
    """``llama.h`` and the ggml headers, without comments (for the ggml enums)."""
    ggml = sorted((llama_source_dir / "ggml" / "include").glob("*.h"))
    return "\n".join([llama_header, *(_strip_comments(p.read_text(encoding="utf-8")) for p in ggml)])


def _declarations(header: str, name: str) -> list[re.Match[str]]:
    pattern = (
        r"(?P<dep1>DEPRECATED\s*\(\s*)?LLAMA_API\s+(?P<dep2>DEPRECATED\s*\(\s*)?"
        r"(?P<ret>[\w\s*]*?)\b" + re.escape(name) + r"\s*\((?P<params>[^()]*)\)"
    )
    return list(re.finditer(pattern, header))


_QUALIFIERS = {"const", "volatile"}
_NEEDS_A_NAME_AFTER = {"struct", "enum", "union", "unsigned", "signed", "const", "volatile"}


def _split_declarator(text: str) -> tuple[list[str], str | None]:
    """Split a declaration into type tokens and name.

    ``"const struct llama_model * model"`` -> ``(["const", "struct", "llama_model", "*"], "model")``.
    """
    tokens = re.findall(r"\w+|\*|\[|\]", text)
    assert "[" not in tokens, f"arrays are not supported by this test: {text!r}"
    if len(tokens) >= 2 and re.fullmatch(r"\w+", tokens[-1]) and tokens[-2] not in _NEEDS_A_NAME_AFTER:
        return tokens[:-1], tokens[-1]
    return tokens, None


_SCALARS: dict[str, type] = {
    "bool": ctypes.c_bool,
    "char": ctypes.c_char,
    "int": ctypes.c_int,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "int8_t": ctypes.c_int8,
    "uint8_t": ctypes.c_uint8,
    "int32_t": ctypes.c_int32,
    "uint32_t": ctypes.c_uint32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "llama_token": ctypes.c_int32,
    "llama_pos": ctypes.c_int32,
    "llama_seq_id": ctypes.c_int32,
}
# typedefs of pointers to something the binding never looks into
_OPAQUE_POINTER_TYPEDEFS = {
    "llama_memory_t",
    "llama_sampler_context_t",
    "ggml_backend_dev_t",
    "ggml_backend_buffer_type_t",
}
# typedefs of function pointers: the mirror must have a CFUNCTYPE of the same name
_CALLBACK_TYPEDEFS = {
    "ggml_log_callback",
    "llama_progress_callback",
    "ggml_abort_callback",
    "ggml_backend_sched_eval_callback",
}


def _mirrored_struct(name: str) -> type[ctypes.Structure] | None:
    obj = getattr(llama_h, name, None)
    return obj if isinstance(obj, type) and issubclass(obj, ctypes.Structure) else None


def _allowed_ctypes(c_type: list[str]) -> tuple[object, ...]:
    """The ctypes types that may stand for a C type, the precise one first.

    Data pointers may always be ``c_void_p`` (the pointee is then not needed); strings may not:
    ``const char *`` must be ``c_char_p`` and ``char *`` (an output buffer) ``POINTER(c_char)``.
    """
    spelled = " ".join(c_type)
    depth = c_type.count("*")
    before_star = c_type[: c_type.index("*")] if depth else c_type
    is_const = "const" in before_star
    base = [t for t in c_type if t not in _QUALIFIERS and t != "*"]

    pointee: object  # the ctypes type of the base, None when it is not mirrored
    pointer_like = False
    if base == ["void"]:
        pointee = None
    elif base[0] == "enum" and len(base) == 2:
        pointee = ctypes.c_int
    elif base[0] == "struct" and len(base) == 2:
        pointee = _mirrored_struct(base[1])
    elif len(base) == 1 and base[0] in _SCALARS:
        pointee = _SCALARS[base[0]]
    elif len(base) == 1 and base[0] in _CALLBACK_TYPEDEFS:
        pointee = getattr(llama_h, base[0], None)
        assert pointee is not None, f"llama_h has no callback type {base[0]}"
        pointer_like = True
    elif len(base) == 1 and base[0] in _OPAQUE_POINTER_TYPEDEFS:
        pointee = None
        pointer_like = True
    elif len(base) == 1 and _mirrored_struct(base[0]) is not None:
        pointee = _mirrored_struct(base[0])
    else:
        raise AssertionError(f"this test does not know the C type {spelled!r}: teach it")

    if depth == 0:
        if base == ["void"]:
            return (None,)
        if pointer_like:
            return (pointee, ctypes.c_void_p) if pointee is not None else (ctypes.c_void_p,)
        assert pointee is not None, f"{spelled} is passed by value but llama_h does not mirror it"
        return (pointee,)
    if base == ["char"] and depth == 1:
        return (ctypes.c_char_p,) if is_const else (ctypes.POINTER(ctypes.c_char),)
    if pointee is None or pointer_like:
        return (ctypes.c_void_p,)
    precise = pointee
    for _ in range(depth):
        precise = ctypes.POINTER(precise)
    return (precise, ctypes.c_void_p)


def _describe(ctype: object) -> str:
    return "void" if ctype is None else getattr(ctype, "__name__", repr(ctype))


# ---------------------------------------------------------------------------------------------
# Functions against the header's declarations
# ---------------------------------------------------------------------------------------------


def test_every_function_is_declared_in_the_header(llama_header: str) -> None:
    problems = []
    for name in llama_h.FUNCTIONS:
        if not re.search(r"\b" + re.escape(name) + r"\s*\(", llama_header):
            problems.append(f"{name}: not in llama.h")
            continue
        found = _declarations(llama_header, name)
        if len(found) != 1:
            problems.append(f"{name}: {len(found)} LLAMA_API declarations in llama.h, expected 1")
        elif found[0].group("dep1") or found[0].group("dep2"):
            problems.append(f"{name}: deprecated in llama.h")
    assert not problems, "functions in llama_h.FUNCTIONS that llama.h lacks:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", list(llama_h.FUNCTIONS))
def test_function_signature_matches_the_header(llama_header: str, name: str) -> None:
    found = _declarations(llama_header, name)
    if len(found) != 1:
        pytest.fail(f"{name} is not declared exactly once in llama.h")
    declaration = found[0]
    signature = llama_h.FUNCTIONS[name]

    ret_type = re.findall(r"\w+|\*", declaration.group("ret"))
    allowed = _allowed_ctypes(ret_type)
    assert signature.restype in allowed, (
        f"{name} returns {' '.join(ret_type)}: restype must be one of "
        f"{[_describe(t) for t in allowed]}, not {_describe(signature.restype)}"
    )

    params_text = declaration.group("params").strip()
    params = [] if params_text in ("", "void") else [p.strip() for p in params_text.split(",")]
    assert len(signature.argtypes) == len(params), (
        f"{name} takes {len(params)} parameter(s) in llama.h ({params_text}), "
        f"the mirror declares {len(signature.argtypes)}"
    )
    for index, (param, argtype) in enumerate(zip(params, signature.argtypes, strict=True)):
        c_type, _ = _split_declarator(param)
        allowed = _allowed_ctypes(c_type)
        assert argtype in allowed, (
            f"{name} parameter {index} is {param!r}: argtype must be one of "
            f"{[_describe(t) for t in allowed]}, not {_describe(argtype)}"
        )


# ---------------------------------------------------------------------------------------------
# Structs and enums against the header's definitions
# ---------------------------------------------------------------------------------------------


def _struct_body(header: str, name: str) -> str:
    match = re.search(r"\bstruct\s+" + re.escape(name) + r"\s*\{(?P<body>[^{}]*)\}", header)
    assert match is not None, f"no definition of struct {name} (without nested braces) in llama.h"
    return match.group("body")


@pytest.mark.parametrize("struct", STRUCTS, ids=lambda s: s.__name__)
def test_struct_fields_match_the_header(llama_header: str, struct: type[ctypes.Structure]) -> None:
    declarations = [d.strip() for d in _struct_body(llama_header, struct.__name__).split(";") if d.strip()]
    c_fields = [_split_declarator(d) for d in declarations]
    c_names = [field_name for _, field_name in c_fields]
    mirror_names = [field[0] for field in struct._fields_]
    assert mirror_names == c_names, f"struct {struct.__name__}: the fields or their order differ"
    for (c_type, field_name), field in zip(c_fields, struct._fields_, strict=True):
        allowed = _allowed_ctypes(c_type)
        assert field[1] in allowed, (
            f"{struct.__name__}.{field_name} is {' '.join(c_type)}: its ctypes type must be one of "
            f"{[_describe(t) for t in allowed]}, not {_describe(field[1])}"
        )


@pytest.mark.parametrize("enum_class", ENUMS, ids=lambda e: e.__name__)
def test_enum_members_match_the_header(all_headers: str, enum_class: type[enum.IntEnum]) -> None:
    match = re.search(r"\benum\s+" + re.escape(enum_class.__name__) + r"\s*\{(?P<body>[^}]*)\}", all_headers)
    assert match is not None, f"no definition of enum {enum_class.__name__} in llama.h or ggml"
    c_members = [m.split("=")[0].strip() for m in match.group("body").split(",") if m.strip()]
    mirror_members = list(enum_class.__members__)
    missing_in_c = sorted(set(mirror_members) - set(c_members))
    assert not missing_in_c, f"enum {enum_class.__name__} has no {missing_in_c} in the header"
    if enum_class.__name__ not in PARTIAL_ENUMS:
        lacking = [m for m in c_members if m not in mirror_members]
        assert not lacking, f"enum {enum_class.__name__}: the mirror lacks {lacking}"
        assert mirror_members == c_members, f"enum {enum_class.__name__}: the members' order differs"


# ---------------------------------------------------------------------------------------------
# Layout and values, from a compiled probe
# ---------------------------------------------------------------------------------------------


def _c_compiler() -> list[str] | None:
    configured = shlex.split(os.environ.get("CC", ""))
    if configured:
        return configured
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _probe_source() -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        '#include "llama.h"',
        "",
        '#define PRINT(key, value) printf("%s %lld\\n", key, (long long)(value))',
        "",
        "int main(void) {",
    ]
    for struct in STRUCTS:
        c_name = f"struct {struct.__name__}"
        lines.append(f'    PRINT("sizeof {struct.__name__}", sizeof({c_name}));')
        lines.append(f'    PRINT("alignof {struct.__name__}", _Alignof({c_name}));')
        for field in struct._fields_:
            key = f"{struct.__name__}.{field[0]}"
            lines.append(f'    PRINT("offsetof {key}", offsetof({c_name}, {field[0]}));')
            lines.append(f'    PRINT("sizeof {key}", sizeof((({c_name} *)0)->{field[0]}));')
    for enum_class in ENUMS:
        for member in enum_class.__members__:
            lines.append(f'    PRINT("value {member}", {member});')
    for constant in CONSTANTS:
        lines.append(f'    PRINT("value {constant}", {constant});')
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


@pytest.fixture(scope="session")
def abi_probe(llama_source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """What the C compiler says: ``"sizeof llama_batch"``, ``"offsetof llama_batch.token"``, ..."""
    compiler = _c_compiler()
    if compiler is None:
        pytest.skip("no C compiler (cc/gcc/clang) found: the ABI probe needs one")
    workdir = tmp_path_factory.mktemp("abi_probe")
    source = workdir / "abi_probe.c"
    source.write_text(_probe_source(), encoding="utf-8")
    executable = workdir / ("abi_probe.exe" if os.name == "nt" else "abi_probe")
    command = [
        *compiler,
        "-I",
        str(llama_source_dir / "include"),
        "-I",
        str(llama_source_dir / "ggml" / "include"),
        str(source),
        "-o",
        str(executable),
    ]
    try:
        built = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except OSError as exc:
        pytest.fail(f"the C compiler {shlex.join(compiler)} could not be run: {exc}", pytrace=False)
    if built.returncode != 0:
        pytest.fail(
            f"the ABI probe did not compile ({shlex.join(command)}):\n{built.stdout}{built.stderr}",
            pytrace=False,
        )
    ran = subprocess.run([str(executable)], capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, f"the ABI probe failed:\n{ran.stdout}{ran.stderr}"
    values: dict[str, int] = {}
    for line in ran.stdout.splitlines():
        key, value = line.rsplit(" ", 1)
        values[key] = int(value)
    return values


@pytest.mark.parametrize("struct", STRUCTS, ids=lambda s: s.__name__)
def test_struct_layout_matches_c(abi_probe: dict[str, int], struct: type[ctypes.Structure]) -> None:
    name = struct.__name__
    mirror = {
        f"sizeof {name}": ctypes.sizeof(struct),
        f"alignof {name}": ctypes.alignment(struct),
    }
    for field in struct._fields_:
        descriptor = getattr(struct, field[0])
        mirror[f"offsetof {name}.{field[0]}"] = descriptor.offset
        mirror[f"sizeof {name}.{field[0]}"] = descriptor.size
    c_values = {key: abi_probe[key] for key in mirror}
    differences = {key: (mirror[key], c_values[key]) for key in mirror if mirror[key] != c_values[key]}
    assert not differences, f"struct {name}: (ctypes, C) differ: {differences}"


@pytest.mark.parametrize("enum_class", ENUMS, ids=lambda e: e.__name__)
def test_enum_values_match_c(abi_probe: dict[str, int], enum_class: type[enum.IntEnum]) -> None:
    differences = {
        name: (int(member), abi_probe[f"value {name}"])
        for name, member in enum_class.__members__.items()  # aliases included
        if int(member) != abi_probe[f"value {name}"]
    }
    assert not differences, f"enum {enum_class.__name__}: (mirror, C) differ: {differences}"


def test_constants_match_c(abi_probe: dict[str, int]) -> None:
    differences = {
        name: (value, abi_probe[f"value {name}"])
        for name, value in CONSTANTS.items()
        if value != abi_probe[f"value {name}"]
    }
    assert not differences, f"constants (mirror, C) differ: {differences}"


# ---------------------------------------------------------------------------------------------
# declare() and missing_symbols(), on a stand-in for the library
# ---------------------------------------------------------------------------------------------


def _noop() -> None:
    pass


def _stand_in_library(*, without: tuple[str, ...] = ()) -> types.SimpleNamespace:
    """An object with one ctypes function pointer per table entry, like a loaded CDLL."""
    function_type = ctypes.CFUNCTYPE(None)
    return types.SimpleNamespace(
        **{name: function_type(_noop) for name in llama_h.FUNCTIONS if name not in without}
    )


def test_declare_sets_argtypes_and_restype() -> None:
    library = _stand_in_library()
    assert llama_h.missing_symbols(library) == []  # type: ignore[arg-type]
    llama_h.declare(library)  # type: ignore[arg-type]
    for name, signature in llama_h.FUNCTIONS.items():
        function = getattr(library, name)
        assert tuple(function.argtypes) == signature.argtypes, name
        assert function.restype is signature.restype, name


def test_missing_symbols_are_all_reported_at_once() -> None:
    names = list(llama_h.FUNCTIONS)
    absent = (names[-1], names[0], names[len(names) // 2])
    library = _stand_in_library(without=absent)
    expected = [name for name in names if name in absent]
    assert llama_h.missing_symbols(library) == expected  # type: ignore[arg-type]
    with pytest.raises(llama_h.MissingSymbolsError) as raised:
        llama_h.declare(library)  # type: ignore[arg-type]
    assert raised.value.symbols == tuple(expected)
    for name in absent:
        assert name in str(raised.value)
    untouched = ctypes.CFUNCTYPE(None)(_noop)
    for name in names:
        if name not in absent:
            function = getattr(library, name)
            assert function.restype is untouched.restype, f"declare() changed {name} before raising"
            assert tuple(function.argtypes) == tuple(untouched.argtypes), name
