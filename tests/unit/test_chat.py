"""Chat templates are rendered from the model's own template, sandboxed, with clear errors."""

from __future__ import annotations

import pytest
from support.synthetic_gguf import CHATML_TEMPLATE

from llambo.api import ChatMessage
from llambo.chat import render_chat
from llambo.errors import InvalidRequest


def test_chatml_renders_turns_and_the_generation_prompt() -> None:
    text = render_chat(
        CHATML_TEMPLATE, [ChatMessage("system", "Be brief."), {"role": "user", "content": "Hi"}]
    )
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not render_chat(
        CHATML_TEMPLATE, [{"role": "user", "content": "Hi"}], add_generation_prompt=False
    ).endswith("assistant\n")


def test_missing_template_and_empty_chat_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="no chat template"):
        render_chat(None, [{"role": "user", "content": "Hi"}])
    with pytest.raises(InvalidRequest, match="at least one message"):
        render_chat(CHATML_TEMPLATE, [])
    with pytest.raises(TypeError):
        render_chat(CHATML_TEMPLATE, [{"role": "user"}])


def test_templates_are_sandboxed_and_may_refuse() -> None:
    with pytest.raises(Exception, match=r"unsafe|access"):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", [{"role": "user", "content": "x"}])
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", [{"role": "user", "content": "x"}])
