"""Chat prompts on the default model: the same text and tokens from both backends, and llama.cpp agrees.

Both backends render the GGUF's template with jinja2; libllama's built-in template support
(``llama_chat_apply_template``, no jinja) must produce the same text wherever the template's own
logic does not add anything, i.e. when the conversation brings its own system message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.native import NATIVE_ONLY

import llambo
from llambo.chat import coerce_messages
from llambo.native.model import NativeModel

pytestmark = NATIVE_ONLY

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? Ünïcode ✓ 漢字"},
    ],
]


@pytest.fixture(scope="module")
def both(default_model_path: Path) -> Iterator[tuple[llambo.Model, llambo.Model]]:
    native = llambo.Model(default_model_path, backend="native", n_ctx=512)
    reference = llambo.Model(default_model_path, backend="reference", n_ctx=512)
    try:
        yield native, reference
    finally:
        native.close()
        reference.close()


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn"])
def test_both_backends_render_the_same_prompt(
    both: tuple[llambo.Model, llambo.Model], messages: list[dict[str, str]]
) -> None:
    native, reference = both
    prompt = native.chat_prompt(messages)
    assert prompt == reference.chat_prompt(messages)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert native.tokenize(prompt, parse_special=True) == reference.tokenize(prompt, parse_special=True)
    if messages[0]["role"] == "system":
        lowlevel = native._model
        assert isinstance(lowlevel, NativeModel)
        assert lowlevel.builtin_chat_prompt(coerce_messages(messages)) == prompt
    else:  # the template adds SmolLM's default system message; llama.cpp's built-in cannot
        assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
