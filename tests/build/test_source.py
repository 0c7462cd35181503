"""The llama.cpp source: verified pip downloads, pruned extraction of a synthetic sdist, pins, local trees."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import llambo._fetch as fetch
from build_tools import source
from build_tools.source import (
    DEFAULT_DEST,
    PIN_FILE,
    STAMP_NAME,
    Pin,
    SourceError,
    extract_pruned,
    fetch_pinned,
    load_pin,
    local_source,
)
from llambo.errors import ChecksumError, FetchError

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40

# Path inside the llama.cpp tree -> content. The keep/prune verdict is asserted per test.
TREE: dict[str, str] = {
    "CMakeLists.txt": (
        "cmake_minimum_required(VERSION 3.14)\n"
        "set(LLAMA_VERSION_MAJOR 0)\nset(LLAMA_VERSION_MINOR 4)\nset(LLAMA_VERSION_PATCH 2)\n"
    ),
    "LICENSE": "MIT\n",
    "include/llama.h": "/* llama.h */\n",
    "src/llama.cpp": "// llama\n",
    "ggml/CMakeLists.txt": "# ggml\n",
    "ggml/include/ggml.h": "/* ggml.h */\n",
    "ggml/src/ggml.c": "/* ggml.c */\n",
    "ggml/src/ggml-cpu/x.c": "/* cpu */\n",
    "ggml/src/ggml-vulkan/y.c": "/* vulkan */\n",
    "tools/z.cpp": "// tool\n",
    "docs/a.md": "# docs\n",
}
KEPT = {
    "CMakeLists.txt",
    "LICENSE",
    "include/llama.h",
    "src/llama.cpp",
    "ggml/CMakeLists.txt",
    "ggml/include/ggml.h",
    "ggml/src/ggml.c",
    "ggml/src/ggml-cpu/x.c",
}
SUBDIR = "vendor/llama.cpp"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def make_sdist(
    path: Path,
    *,
    commit: str | None = COMMIT_A,
    tree: dict[str, str] | None = None,
    extra: Sequence[tuple[str, bytes]] = (),
    executable: Sequence[str] = (),
) -> Path:
    """A .tar.gz laid out like llama-cpp-python's sdist: pkg-1.0/vendor/llama.cpp/... plus .git/modules."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "pkg-1.0/PKG-INFO", b"Name: pkg\n")
        for rel, text in (tree if tree is not None else TREE).items():
            _add(tar, f"pkg-1.0/{SUBDIR}/{rel}", text.encode(), 0o755 if rel in executable else 0o644)
        if commit is not None:
            _add(tar, f"pkg-1.0/.git/modules/{SUBDIR}/HEAD", (commit + "\n").encode())
        for name, data in extra:
            _add(tar, name, data)
    return path


def make_pin(sdist: Path, *, commit: str = COMMIT_A, version: str = "1.0") -> Pin:
    return Pin(
        package="pkg",
        version=version,
        filename=sdist.name,
        sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(),
        subdir=SUBDIR,
        llama_cpp_commit=commit,
    )


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def read_stamp(dest: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads((dest / STAMP_NAME).read_text())
    return data


# --- verified pip downloads -------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_verify_sha256_refuses_and_deletes_a_wrong_file(tmp_path: Path) -> None:
    bad = tmp_path / "downloads" / "pkg-1.0.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"not the real thing")
    expected = _sha(b"the real thing")

    with pytest.raises(ChecksumError) as info:
        fetch.verify_sha256(bad, expected, "cached pkg-1.0.tar.gz")

    assert not bad.exists()
    assert info.value.expected == expected
    assert info.value.actual == _sha(b"not the real thing")
    assert str(bad) in str(info.value)


def test_verify_sha256_accepts_the_right_file_and_ignores_hex_case(tmp_path: Path) -> None:
    good = tmp_path / "f.bin"
    good.write_bytes(b"payload")
    fetch.verify_sha256(good, _sha(b"payload").upper(), "f.bin")
    assert good.read_bytes() == b"payload"


def test_pip_download_reuses_a_verified_cached_file_without_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    cached = downloads / "pkg-1.0.tar.gz"
    cached.write_bytes(b"sdist bytes")

    def no_pip(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        pytest.fail(f"pip must not run for a verified cached file: {args!r}")

    monkeypatch.setattr(subprocess, "run", no_pip)
    got = fetch.pip_download("pkg==1.0", cached.name, downloads, _sha(b"sdist bytes"), source_only=True)
    assert got == cached
    assert cached.read_bytes() == b"sdist bytes"


class FakePip:
    """Stands in for subprocess.run of `pip download`: writes ``payload`` as ``filename`` into --dest."""

    def __init__(self, filename: str, payload: bytes, returncode: int = 0) -> None:
        self.filename = filename
        self.payload = payload
        self.returncode = returncode
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(list(cmd))
        dest = Path(cmd[cmd.index("--dest") + 1])
        if self.returncode == 0:
            (dest / self.filename).write_bytes(self.payload)
        return subprocess.CompletedProcess(cmd, self.returncode)


def test_pip_download_refetches_a_cached_file_with_the_wrong_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "pkg-1.0.tar.gz").write_bytes(b"truncated")
    pip = FakePip("pkg-1.0.tar.gz", b"sdist bytes")
    monkeypatch.setattr(subprocess, "run", pip)

    got = fetch.pip_download(
        "pkg==1.0", "pkg-1.0.tar.gz", downloads, _sha(b"sdist bytes"), source_only=True, quiet=True
    )

    assert got.read_bytes() == b"sdist bytes"
    assert len(pip.calls) == 1
    cmd = pip.calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd
    assert cmd[cmd.index("--no-binary") + 1] == ":all:"
    assert "--only-binary" not in cmd
    assert cmd[-1] == "pkg==1.0"


def test_pip_download_wheel_mode_asks_for_binaries_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pip = FakePip("pkg-1.0-py3-none-any.whl", b"wheel")
    monkeypatch.setattr(subprocess, "run", pip)
    fetch.pip_download("pkg==1.0", "pkg-1.0-py3-none-any.whl", tmp_path / "d", _sha(b"wheel"), quiet=True)
    cmd = pip.calls[0]
    assert cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert "--no-binary" not in cmd


def test_pip_download_refuses_wrong_bytes_from_pip_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "pkg-1.0.tar.gz").write_bytes(b"stale")
    pip = FakePip("pkg-1.0.tar.gz", b"tampered bytes")
    monkeypatch.setattr(subprocess, "run", pip)

    with pytest.raises(ChecksumError) as info:
        fetch.pip_download("pkg==1.0", "pkg-1.0.tar.gz", downloads, _sha(b"sdist bytes"), quiet=True)

    assert len(pip.calls) == 1
    assert info.value.actual == _sha(b"tampered bytes")
    assert list(downloads.iterdir()) == []


def test_pip_download_failure_says_how_to_place_the_file_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip("pkg-1.0.tar.gz", b"", returncode=1))
    with pytest.raises(FetchError, match=r"pkg-1\.0\.tar\.gz \(sha256 0+\)"):
        fetch.pip_download("pkg==1.0", "pkg-1.0.tar.gz", tmp_path, "0" * 64, quiet=True)


# --- pruned extraction ------------------------------------------------------------------------


def test_extract_pruned_keeps_the_library_source_and_prunes_the_rest(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path / "pkg-1.0.tar.gz", executable=("src/llama.cpp",))
    pin = make_pin(sdist)
    dest = tmp_path / "out" / "llama.cpp"

    count = extract_pruned(sdist, pin, dest)

    assert files_under(dest) == KEPT | {STAMP_NAME}
    assert count == len(KEPT)
    for rel in KEPT:
        assert (dest / rel).read_text() == TREE[rel]
    assert not (dest / "ggml/src/ggml-vulkan").exists()
    assert not (dest / "tools").exists()
    assert not (dest / "docs").exists()
    assert (dest / "src/llama.cpp").stat().st_mode & 0o777 == 0o755
    assert (dest / "include/llama.h").stat().st_mode & 0o777 == 0o644
    assert not dest.with_name("llama.cpp.partial").exists()

    stamp = read_stamp(dest)
    assert stamp["origin"] == "pinned"
    assert stamp["identity"] == pin.identity
    assert stamp["commit"] == COMMIT_A
    assert stamp["package"] == "pkg==1.0"
    assert stamp["sha256"] == pin.sha256
    assert stamp["llama_cpp_version"] == "0.4.2"
    assert stamp["files"] == str(len(KEPT))


def test_extract_pruned_refuses_a_commit_other_than_the_pin(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path / "pkg-1.0.tar.gz", commit=COMMIT_B)
    pin = make_pin(sdist, commit=COMMIT_A)
    dest = tmp_path / "llama.cpp"

    with pytest.raises(SourceError, match=f"{COMMIT_B}.*{COMMIT_A}"):
        extract_pruned(sdist, pin, dest)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg-1.0.tar.gz"]


def test_extract_pruned_failure_keeps_the_previous_tree(tmp_path: Path) -> None:
    good = make_sdist(tmp_path / "good.tar.gz")
    dest = tmp_path / "llama.cpp"
    extract_pruned(good, make_pin(good), dest)
    before = files_under(dest)

    bad = make_sdist(tmp_path / "bad.tar.gz", commit=COMMIT_B)
    with pytest.raises(SourceError):
        extract_pruned(bad, make_pin(bad, commit=COMMIT_A), dest)

    assert files_under(dest) == before
    assert read_stamp(dest)["commit"] == COMMIT_A
    assert not dest.with_name("llama.cpp.partial").exists()


def test_extract_pruned_refuses_an_sdist_without_llama_h(tmp_path: Path) -> None:
    tree = {k: v for k, v in TREE.items() if k != "include/llama.h"}
    sdist = make_sdist(tmp_path / "pkg-1.0.tar.gz", tree=tree)
    dest = tmp_path / "llama.cpp"
    with pytest.raises(SourceError, match=r"include/llama\.h"):
        extract_pruned(sdist, make_pin(sdist), dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg-1.0.tar.gz"]


def test_extract_pruned_without_a_git_head_trusts_the_pinned_commit(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path / "pkg-1.0.tar.gz", commit=None)
    dest = tmp_path / "llama.cpp"
    extract_pruned(sdist, make_pin(sdist, commit=COMMIT_B), dest)
    assert read_stamp(dest)["commit"] == COMMIT_B


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "pkg-1.0/../evil",
        f"pkg-1.0/{SUBDIR}/../../evil",
        f"pkg-1.0/{SUBDIR}/../../../evil",
    ],
)
def test_extract_pruned_ignores_members_outside_the_llama_cpp_tree(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sdist = make_sdist(tmp_path / "pkg-1.0.tar.gz", extra=[(name, b"pwned")])
    dest = work / "llama.cpp"

    extract_pruned(sdist, make_pin(sdist), dest)

    assert files_under(dest) == KEPT | {STAMP_NAME}
    assert sorted(p.name for p in work.iterdir()) == ["llama.cpp"]
    assert list(tmp_path.parent.rglob("evil")) == []


@pytest.mark.parametrize(
    "name",
    [
        f"pkg-1.0/{SUBDIR}/src/../../../evil",
        f"pkg-1.0/{SUBDIR}/include/../../../../evil",
        f"pkg-1.0/{SUBDIR}/ggml/src/ggml-cpu/../../../../../evil",
    ],
)
def test_extract_pruned_refuses_a_kept_path_that_climbs_out(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sdist = make_sdist(tmp_path / "pkg-1.0.tar.gz", extra=[(name, b"pwned")])
    dest = work / "llama.cpp"

    with pytest.raises(SourceError, match="unsafe path"):
        extract_pruned(sdist, make_pin(sdist), dest)

    assert list(work.iterdir()) == [], "no tree and no half-extracted staging dir may be left"
    assert list(tmp_path.parent.rglob("evil")) == []


def test_extract_pruned_skips_links(tmp_path: Path) -> None:
    sdist = tmp_path / "pkg-1.0.tar.gz"
    make_sdist(sdist)
    # Rewrite with a symlink and a hard link inside kept directories.
    with tarfile.open(sdist, "r:gz") as tar:
        members = [(m, tar.extractfile(m)) for m in tar]
        blobs = [(m, fh.read() if fh else b"") for m, fh in members]
    with tarfile.open(sdist, "w:gz") as tar:
        for member, data in blobs:
            tar.addfile(member, io.BytesIO(data))
        sym = tarfile.TarInfo(f"pkg-1.0/{SUBDIR}/src/passwd")
        sym.type = tarfile.SYMTYPE
        sym.linkname = "/etc/passwd"
        tar.addfile(sym)
        hard = tarfile.TarInfo(f"pkg-1.0/{SUBDIR}/include/shadow")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "/etc/shadow"
        tar.addfile(hard)
    dest = tmp_path / "llama.cpp"

    extract_pruned(sdist, make_pin(sdist), dest)

    assert files_under(dest) == KEPT | {STAMP_NAME}


# --- fetch_pinned: reuse and pin changes -------------------------------------------------------


class FakeDownload:
    """Stands in for build_tools.source.pip_download, serving synthetic sdists by requirement."""

    def __init__(self, sdists: dict[str, Path]) -> None:
        self.sdists = sdists
        self.calls: list[tuple[str, str, str, bool]] = []

    def __call__(
        self,
        requirement: str,
        filename: str,
        dest: Path,
        sha256: str,
        *,
        source_only: bool = False,
        quiet: bool = False,
    ) -> Path:
        self.calls.append((requirement, filename, sha256, source_only))
        return self.sdists[requirement]


def test_fetch_pinned_reextracts_when_the_pin_changes_and_reuses_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLAMBO_CACHE_DIR", str(tmp_path / "cache"))
    sdist_a = make_sdist(tmp_path / "pkg-1.0.tar.gz", commit=COMMIT_A)
    tree_b = {**TREE, "CMakeLists.txt": TREE["CMakeLists.txt"].replace("MINOR 4", "MINOR 7")}
    tree_b["include/llama.h"] = "/* llama.h, newer */\n"
    sdist_b = make_sdist(tmp_path / "pkg-2.0.tar.gz", commit=COMMIT_B, tree=tree_b)
    pin_a = make_pin(sdist_a, commit=COMMIT_A, version="1.0")
    pin_b = make_pin(sdist_b, commit=COMMIT_B, version="2.0")
    dest = tmp_path / "third_party" / "llama.cpp"
    download = FakeDownload({"pkg==1.0": sdist_a, "pkg==2.0": sdist_b})
    monkeypatch.setattr(source, "pip_download", download)

    info_a = fetch_pinned(pin_a, dest, quiet=True)
    assert info_a.identity == pin_a.identity
    assert info_a.commit == COMMIT_A
    assert info_a.llama_cpp_version == "0.4.2"
    assert download.calls == [("pkg==1.0", "pkg-1.0.tar.gz", pin_a.sha256, True)]

    info_b = fetch_pinned(pin_b, dest)
    assert download.calls[-1] == ("pkg==2.0", "pkg-2.0.tar.gz", pin_b.sha256, True)
    assert len(download.calls) == 2
    assert "pkg==1.0" in capsys.readouterr().err
    stamp = read_stamp(dest)
    assert stamp["identity"] == pin_b.identity != pin_a.identity
    assert stamp["commit"] == COMMIT_B
    assert (dest / "include/llama.h").read_text() == "/* llama.h, newer */\n"
    assert (info_b.identity, info_b.commit, info_b.llama_cpp_version, info_b.origin) == (
        pin_b.identity,
        COMMIT_B,
        "0.7.2",
        "pinned",
    )

    def no_download(*args: Any, **kwargs: Any) -> Path:
        pytest.fail("an up-to-date tree must be reused without downloading")

    monkeypatch.setattr(source, "pip_download", no_download)
    again = fetch_pinned(pin_b, dest, quiet=True)
    assert again == info_b


def test_fetch_pinned_replaces_a_tree_with_a_corrupt_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMBO_CACHE_DIR", str(tmp_path / "cache"))
    sdist = make_sdist(tmp_path / "pkg-1.0.tar.gz")
    pin = make_pin(sdist)
    dest = tmp_path / "llama.cpp"
    dest.mkdir()
    (dest / STAMP_NAME).write_text("{not json")
    (dest / "leftover.txt").write_text("old")
    download = FakeDownload({"pkg==1.0": sdist})
    monkeypatch.setattr(source, "pip_download", download)

    fetch_pinned(pin, dest, quiet=True)

    assert len(download.calls) == 1
    assert files_under(dest) == KEPT | {STAMP_NAME}


# --- the pin ----------------------------------------------------------------------------------


def test_pin_identity_changes_with_every_field() -> None:
    base = Pin("p", "1.0", "p-1.0.tar.gz", "0" * 64, "vendor/x", "c" * 40)
    assert base.identity == dataclasses.replace(base).identity
    assert re.fullmatch(r"pinned:[0-9a-f]{16}", base.identity)
    identities = {base.identity}
    for field in dataclasses.fields(Pin):
        changed = dataclasses.replace(base, **{field.name: getattr(base, field.name) + "x"})
        assert changed.identity != base.identity, field.name
        identities.add(changed.identity)
    assert len(identities) == len(dataclasses.fields(Pin)) + 1


def test_load_pin_reads_the_real_pin_file() -> None:
    pin = load_pin()
    assert PIN_FILE.name == "pin.json"
    assert pin.package == "llama-cpp-python"
    assert pin.version == "0.3.36"
    assert pin.requirement == "llama-cpp-python==0.3.36"
    assert pin.filename == "llama_cpp_python-0.3.36.tar.gz"
    assert pin.sha256 == "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    assert pin.subdir == "vendor/llama.cpp"
    assert re.fullmatch(r"[0-9a-f]{40}", pin.llama_cpp_commit)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Pin)])
def test_load_pin_names_a_missing_field(tmp_path: Path, field: str) -> None:
    data = json.loads(PIN_FILE.read_text())
    del data[field]
    path = tmp_path / "pin.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SourceError, match=rf"lacks {field}$"):
        load_pin(path)


# --- local checkouts --------------------------------------------------------------------------


def make_local_tree(root: Path) -> Path:
    for rel in ("CMakeLists.txt", "include/llama.h", "src/llama.cpp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(TREE[rel])
    return root


def test_local_source_refuses_a_dir_that_is_not_llama_cpp(tmp_path: Path) -> None:
    (tmp_path / "CMakeLists.txt").write_text("project(x)\n")
    with pytest.raises(SourceError) as info:
        local_source(tmp_path)
    message = str(info.value)
    assert str(tmp_path.resolve()) in message
    assert "include/llama.h" in message
    assert "LLAMBO_LLAMA_CPP_DIR" in message and "--source" in message


def test_local_source_describes_a_checkout_and_tracks_its_header(tmp_path: Path) -> None:
    tree = make_local_tree(tmp_path / "llama.cpp")

    info = local_source(tree)
    assert info.origin == "local"
    assert info.path == tree.resolve()
    assert info.llama_cpp_version == "0.4.2"
    assert info.identity.startswith("local:")
    assert local_source(tree).identity == info.identity

    (tree / "include/llama.h").write_text("/* llama.h, edited */\n")
    assert local_source(tree).identity != info.identity

    copy = shutil.copytree(tree, tmp_path / "other")
    (copy / "include/llama.h").write_text(TREE["include/llama.h"])
    assert local_source(copy).identity != info.identity  # another checkout is another source


def test_local_source_reports_the_git_commit(tmp_path: Path) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    tree = make_local_tree(tmp_path / "llama.cpp")
    quiet: dict[str, Any] = {"cwd": tree, "check": True, "capture_output": True}
    subprocess.run([git, "init", "-q"], **quiet)
    subprocess.run([git, "add", "."], **quiet)
    subprocess.run(
        [git, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "x"], **quiet
    )
    head = subprocess.run([git, "rev-parse", "HEAD"], **quiet, text=True).stdout.strip()

    before = local_source(tree)
    assert before.commit == head
    (tree / "README").write_text("x")
    subprocess.run([git, "add", "."], **quiet)
    subprocess.run(
        [git, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "y"], **quiet
    )
    after = local_source(tree)
    assert after.commit != head
    assert after.identity != before.identity


def test_resolve_source_prefers_explicit_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = make_local_tree(tmp_path / "explicit")
    from_env = make_local_tree(tmp_path / "env")
    monkeypatch.setenv("LLAMBO_LLAMA_CPP_DIR", str(from_env))

    def no_fetch(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a local source must not fetch the pinned one")

    monkeypatch.setattr(source, "fetch_pinned", no_fetch)
    assert source.resolve_source(explicit).path == explicit.resolve()
    assert source.resolve_source().path == from_env.resolve()


# --- the real fetched tree --------------------------------------------------------------------


def test_fetched_tree_is_the_pruned_pinned_source(llama_source_dir: Path) -> None:
    if llama_source_dir.resolve() != DEFAULT_DEST.resolve():
        pytest.skip("LLAMBO_LLAMA_CPP_DIR points at a local checkout; these checks are for the pinned tree")
    pin = load_pin()

    assert (llama_source_dir / "include" / "llama.h").is_file()
    assert (llama_source_dir / "ggml" / "src" / "ggml-cpu").is_dir()
    assert (llama_source_dir / "ggml" / "src" / "ggml-cuda").is_dir()
    assert not (llama_source_dir / "tools").exists()
    assert not (llama_source_dir / "examples").exists()
    assert not (llama_source_dir / "ggml" / "src" / "ggml-vulkan").exists()

    stamp = read_stamp(llama_source_dir)
    assert stamp["commit"] == pin.llama_cpp_commit
    assert stamp["identity"] == pin.identity, (
        "the tree is from another pin: run `python -m build_tools fetch`"
    )
    assert re.fullmatch(r"0\.\d+\.\d+", stamp["llama_cpp_version"])

    size = sum(p.stat().st_size for p in llama_source_dir.rglob("*") if p.is_file())
    assert size < 40 * 1024 * 1024, f"pruned tree is {size / 2**20:.1f} MiB"
