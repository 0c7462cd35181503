"""``llambo chat`` with piped stdin: history kept across turns, /reset, /exit, no prompt echo."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import assert_clean_error, llambo, streamed

import llambo as api

GREEDY = ("--backend", "reference", "--temp", "0", "-n", "6")


def replies(path: Path, turns: list[str | None], *, n_ctx: int = 0, max_tokens: int = 6) -> list[str]:
    """The reference backend's in-process replies to ``turns`` (None: a /reset)."""
    out: list[str] = []
    history: list[dict[str, str]] = []
    with api.Model(path, backend="reference", n_ctx=n_ctx) as model:
        for turn in turns:
            if turn is None:
                history = []
                continue
            history.append({"role": "user", "content": turn})
            text = model.chat(history, temperature=0, max_tokens=max_tokens).text
            history.append({"role": "assistant", "content": text})
            out.append(text)
    return out


def test_two_turns_keep_the_history_and_exit_stops(tiny_model: Path) -> None:
    out = llambo("chat", "-m", str(tiny_model), *GREEDY, stdin="hello\n\nwhat now?\n/exit\nnever read\n")
    assert out.returncode == 0, out
    first, second = replies(tiny_model, ["hello", "what now?"])
    assert out.stdout == streamed(first) + streamed(second)
    assert ">>>" not in out.stdout + out.stderr  # no prompt echo when stdin is not a terminal


def test_reset_forgets_the_history(tiny_model: Path) -> None:
    out = llambo("chat", "-m", str(tiny_model), *GREEDY, stdin="hello\n/reset\nhello\n")  # EOF ends it
    assert out.returncode == 0, out
    assert out.stdout == "".join(streamed(t) for t in replies(tiny_model, ["hello", None, "hello"]))


def test_a_failed_turn_is_reported_and_the_chat_goes_on(tiny_model: Path) -> None:
    """The history outgrows a 64-token context: that turn fails (status 1), /reset recovers."""
    long_turn = "tell me more about the things you said before, in detail"
    stdin = f"hello\n{long_turn}\n{long_turn}\n/reset\nhi\n"
    options = ("--backend", "reference", "--temp", "0", "-n", "20", "--ctx", "64")
    out = llambo("chat", "-m", str(tiny_model), *options, stdin=stdin)
    assert out.returncode == 1, out
    assert "context holds 64" in out.stderr and "/reset" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout.endswith(streamed(replies(tiny_model, ["hi"], n_ctx=64, max_tokens=20)[0]))


def test_chat_needs_a_template(plain_model: Path) -> None:
    assert_clean_error(llambo("chat", "-m", str(plain_model), stdin="hi\n"), 1, "--template")
    out = llambo("chat", "-m", str(plain_model), *GREEDY, "--template", "chatml", stdin="hi\n")
    assert out.returncode == 0, out


@pytest.mark.slow
def test_default_model_conversation(default_model_path: Path) -> None:
    stdin = "What is the capital of France? Answer in one sentence.\nAnd the capital of Italy?\n/exit\n"
    options = ("--threads", "1", "--temp", "0", "--repeat-penalty", "1.1", "-n", "20")
    out = llambo("chat", *options, stdin=stdin)
    assert out.returncode == 0, out
    assert "Paris" in out.stdout
    assert out.stderr.count("llambo: error") == 0, out.stderr
