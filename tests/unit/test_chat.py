"""Chat templates are rendered from the model's own template, sandboxed, with clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest
from support.synthetic_gguf import CHATML_TEMPLATE

from llambo.api import ChatMessage, LoadedModel
from llambo.chat import chat_prompt, render_chat
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


class _TemplateOnly:
    """Just enough of a loaded model for chat_prompt: a chat template jinja2 cannot parse."""

    def chat_template(self) -> str:
        return "{% if %}broken"


class _WithBuiltin(_TemplateOnly):
    def builtin_chat_prompt(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        return "|".join(f"{m.role}:{m.content}" for m in messages) + ("|>" if add_generation_prompt else "")


def test_a_template_jinja_cannot_render_falls_back_to_the_builtin_when_the_model_has_one() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    assert chat_prompt(cast(LoadedModel, _WithBuiltin()), messages) == "user:Hi|>"
    assert chat_prompt(cast(LoadedModel, _WithBuiltin()), messages, add_generation_prompt=False) == "user:Hi"
    with pytest.raises(InvalidRequest, match="could not be rendered"):
        chat_prompt(cast(LoadedModel, _TemplateOnly()), messages)
    with pytest.raises(
        InvalidRequest, match="could not be rendered"
    ):  # an explicit template never falls back
        chat_prompt(cast(LoadedModel, _WithBuiltin()), messages, template="{% if %}")
