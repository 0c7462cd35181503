"""Chat prompts: a model's own chat template (from its GGUF) rendered with a sandboxed jinja2.

Both backends build the prompt the same way, so a conversation gives the same tokens whichever
backend runs it: the GGUF's ``tokenizer.chat_template`` rendered as jinja, as llama.cpp's own tools
do with their jinja engine. When jinja2 cannot render a template, the native backend falls back to
libllama's built-in template support (``llama_chat_apply_template``, which recognises the common
template families by their markers). A model without a template needs an explicit ``template``:
a jinja string or the name of a built-in one (:data:`BUILTIN_TEMPLATES`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from .api import BuiltinChatTemplate, ChatMessage, LoadedModel
from .errors import InvalidRequest

__all__ = ["BUILTIN_TEMPLATES", "CHATML", "Messages", "chat_prompt", "coerce_messages", "render_chat"]

_log = logging.getLogger("llambo")

Messages = Sequence[ChatMessage | Mapping[str, str]]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The ChatML template (``<|im_start|>role ... <|im_end|>``), for models trained on it without one."""

BUILTIN_TEMPLATES = {"chatml": CHATML}


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise InvalidRequest(f"the chat template refused the messages: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def coerce_messages(messages: Messages) -> tuple[ChatMessage, ...]:
    """Messages as ChatMessage objects (dicts with str ``role`` and ``content`` accepted)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a sequence of chat messages, got {type(messages).__name__}")
    turns = tuple(ChatMessage.coerce(m) for m in messages)
    if not turns:
        raise InvalidRequest("a chat needs at least one message")
    return turns


def render_chat(
    template: str | None,
    messages: Messages,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` under ``template`` (a GGUF ``tokenizer.chat_template``)."""
    if template is None:
        raise InvalidRequest(
            "this model has no chat template (tokenizer.chat_template); pass template='chatml' "
            "(or a jinja template string) to chat with it, or give a plain prompt instead"
        )
    turns = coerce_messages(messages)
    rendered: str = _compile(template).render(
        messages=[{"role": t.role, "content": t.content} for t in turns],
        add_generation_prompt=add_generation_prompt,
    )
    return rendered


def chat_prompt(
    model: LoadedModel,
    messages: Messages,
    *,
    template: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt for ``messages`` on ``model``: its own template, or ``template`` when given."""
    import jinja2

    if template is not None:
        if not isinstance(template, str):
            raise TypeError(
                f"template must be a str (jinja or a built-in name), got {type(template).__name__}"
            )
        source: str | None = BUILTIN_TEMPLATES.get(template.strip().lower(), template)
    else:
        source = model.chat_template()
    turns = coerce_messages(messages)
    try:
        return render_chat(source, turns, add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as exc:
        if template is not None or not isinstance(model, BuiltinChatTemplate):
            raise InvalidRequest(f"the chat template could not be rendered: {exc}") from exc
        _log.info("jinja2 cannot render the model's chat template (%s); using llama.cpp's built-in", exc)
        return model.builtin_chat_prompt(turns, add_generation_prompt=add_generation_prompt)
