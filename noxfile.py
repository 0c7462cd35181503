"""nox sessions for llambo; each is a thin call into build_tools or pytest.

nox -s check            toolchain table (add `-- --cuda` for a CUDA build's needs)
nox -s build            compile llama.cpp into llambo/_lib (`-- --cuda --cuda-arch 90 ...`)
nox -s tests            the whole test suite, both backends (builds the library first)
nox -s demo             answer a question with the default model, streaming
nox -s lint             ruff and mypy
nox -s clean            remove builds and llambo/_lib (`-- --all`: also source and caches)
"""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

DEMO_QUESTION = "What is the capital of France? Answer in one sentence."


def _build_requirements(session: nox.Session) -> None:
    """Tools the build needs inside the session: pip's CMake/ninja only where the system lacks them."""
    packages = ["scikit-build-core>=0.10"]
    if not shutil.which("cmake"):
        packages.append("cmake>=3.21")
    if not shutil.which("ninja"):
        packages.append("ninja")
    session.install(*packages)


def _install_llambo(session: nox.Session, *extras: str) -> None:
    """Install the checkout in editable, pure-Python mode: the native library comes from `build`."""
    target = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", target, env={"LLAMBO_NATIVE": "0"})


def _native_build(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "build_tools", "build", *args)


@nox.session(python=False)
def check(session: nox.Session) -> None:
    """Print what the toolchain has and lacks; fails only when the requested build cannot run."""
    session.run("python3", "-m", "build_tools", "check", *session.posargs, external=True)


@nox.session
def build(session: nox.Session) -> None:
    """Compile llama.cpp's shared libraries into llambo/_lib (options after --, see build_tools)."""
    _build_requirements(session)
    _native_build(session, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Build the native library, fetch the default model, run every test against both backends."""
    _build_requirements(session)
    _install_llambo(session, "test")
    _native_build(session)
    session.run("python", "-m", "build_tools", "model")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]))


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: answer a question with the default model, streaming, and report the backend."""
    _build_requirements(session)
    _install_llambo(session)
    _native_build(session)
    question = " ".join(session.posargs) or DEMO_QUESTION
    session.log(f"question: {question}")
    # Greedy, with a light repeat penalty: the small default model answers plainly and briefly.
    sampling = ["--temp", "0", "--repeat-penalty", "1.1", "-n", "128"]
    session.run("python", "-m", "llambo", "run", *sampling, question)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (style and errors) and mypy --strict (types)."""
    session.install("ruff>=0.6", "mypy>=1.10", "pytest>=8", "nox", "numpy", "gguf")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=False)
def clean(session: nox.Session) -> None:
    """Remove build directories and llambo/_lib; `-- --all` also the fetched source and caches."""
    session.run("python3", "-m", "build_tools", "clean", *session.posargs, external=True)
