"""``llambo run``: prompt from the argument or stdin, streamed text, summary line, chat templates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_support import NATIVE_REASON, assert_clean_error, llambo, needs_native, streamed

import llambo as api

SUMMARY = re.compile(
    r"^\[(native|reference)\] (\d+) tokens, [\d.]+ tokens/s; prompt (\d+) tokens, [\d.]+ tokens/s; "
    r"finish: (stop|length)$"
)
GREEDY = ("--temp", "0", "-n", "8")


def expected(path: Path, prompt: str, *, chat: bool, **sampling: object) -> str:
    """What the reference backend generates in-process for the same request."""
    with api.Model(path, backend="reference") as model:
        if chat:
            return model.chat([{"role": "user", "content": prompt}], **sampling).text
        return model.generate(prompt, **sampling).text


def test_argument_prompt_streams_the_reference_text_and_a_summary(tiny_model: Path) -> None:
    out = llambo("run", "-m", str(tiny_model), "--backend", "reference", *GREEDY, "hello there")
    assert out.returncode == 0, out
    assert out.stdout == streamed(expected(tiny_model, "hello there", chat=True, temperature=0, max_tokens=8))
    match = SUMMARY.match(out.stderr_lines()[-1])
    assert match is not None, out.stderr
    assert match.group(1) == "reference"
    assert int(match.group(2)) <= 8


def test_prompt_from_stdin_equals_the_argument(tiny_model: Path) -> None:
    common = ("run", "-m", str(tiny_model), "--backend", "reference", "--no-chat", *GREEDY)
    by_argument = llambo(*common, "the cat")
    from_stdin = llambo(*common, stdin="the cat\n")
    from_dash = llambo(*common, "-", stdin="the cat")
    assert by_argument.returncode == from_stdin.returncode == from_dash.returncode == 0
    assert by_argument.stdout == from_stdin.stdout == from_dash.stdout
    assert by_argument.stdout == streamed(
        expected(tiny_model, "the cat", chat=False, temperature=0, max_tokens=8)
    )


def test_quiet_prints_no_summary(tiny_model: Path) -> None:
    out = llambo("run", "-q", "-m", str(tiny_model), "--backend", "reference", *GREEDY, "hi")
    assert out.returncode == 0, out
    assert out.stderr == ""


def test_sampling_options_reach_the_generation(tiny_model: Path) -> None:
    sampling = {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "min_p": 0.0, "seed": 42, "max_tokens": 12}
    sampling |= {"repeat_penalty": 1.3, "repeat_last_n": 16}
    options = ["--temp", "0.7", "--top-k", "5", "--top-p", "0.9", "--min-p", "0", "--seed", "42", "-n", "12"]
    options += ["--repeat-penalty", "1.3", "--repeat-last-n", "16"]
    text = expected(tiny_model, "seeded", chat=False, **sampling)
    command = ("run", "-m", str(tiny_model), "--backend", "reference", "--no-chat", *options)
    out = llambo(*command, "seeded")
    assert out.returncode == 0, out
    assert out.stdout == streamed(text)
    if len(text) >= 4:  # a stop string from the middle of that text cuts it there
        stop = text[2:4]
        cut = expected(tiny_model, "seeded", chat=False, stop=(stop,), **sampling)
        out = llambo(*command, "--stop", stop, "seeded")
        assert out.returncode == 0, out
        assert out.stdout == streamed(cut)
        assert stop not in out.stdout


def test_system_message_and_template_choice(tiny_model: Path, plain_model: Path) -> None:
    with api.Model(tiny_model, backend="reference") as model:
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        want = model.chat(messages, temperature=0, max_tokens=8).text
    out = llambo(
        "run", "-m", str(tiny_model), "--backend", "reference", *GREEDY, "--system", "be brief", "hi"
    )
    assert out.returncode == 0, out
    assert out.stdout == streamed(want)

    # No template in the model: plain completion by default; --chat needs --template.
    plain = llambo("run", "-m", str(plain_model), "--backend", "reference", *GREEDY, "hi")
    assert plain.returncode == 0, plain
    assert plain.stdout == streamed(expected(plain_model, "hi", chat=False, temperature=0, max_tokens=8))
    assert_clean_error(llambo("run", "-m", str(plain_model), "--chat", "hi"), 1, "--template")
    chatml = llambo(
        "run",
        "-m",
        str(plain_model),
        "--backend",
        "reference",
        *GREEDY,
        "--chat",
        "--template",
        "chatml",
        "hi",
    )
    assert chatml.returncode == 0, chatml


def test_usage_errors_exit_2(tiny_model: Path) -> None:
    assert_clean_error(
        llambo("run", "-m", str(tiny_model), "--no-chat", "--system", "x", "hi"), 2, "--system"
    )
    assert_clean_error(llambo("run", "-m", str(tiny_model), stdin=""), 2, "empty")
    assert llambo("run", "--max-tokens", "many", "hi").returncode == 2


def test_bad_sampling_value_exits_1(tiny_model: Path) -> None:
    assert_clean_error(llambo("run", "-m", str(tiny_model), "--temp", "-1", "hi"), 1, "temperature")


@needs_native
def test_native_backend_streams(tiny_model: Path) -> None:
    out = llambo("run", "-m", str(tiny_model), "--backend", "native", *GREEDY, "hello")
    assert out.returncode == 0, out
    match = SUMMARY.match(out.stderr_lines()[-1])
    assert match is not None and match.group(1) == "native", out.stderr


@pytest.mark.slow
def test_default_model_answers(default_model_path: Path) -> None:
    """No -m: the default model (cached by the fixture) answers the demo question."""
    question = "What is the capital of France? Answer in one sentence."
    # One thread: on a busy 2-core machine llama.cpp's spinning thread pool is many times slower.
    out = llambo("run", "--threads", "1", "--temp", "0", "--repeat-penalty", "1.1", "-n", "24", question)
    assert out.returncode == 0, out
    assert "Paris" in out.stdout
    match = SUMMARY.match(out.stderr_lines()[-1])
    assert match is not None, out.stderr
    assert match.group(1) == ("native" if NATIVE_REASON is None else "reference")
