"""Chat prompts: a model's own chat template (from its GGUF) rendered with a sandboxed jinja2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from .api import ChatMessage
from .errors import InvalidRequest


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise InvalidRequest(f"the chat template refused the messages: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(
    template: str | None,
    messages: Sequence[ChatMessage | Mapping[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` under ``template`` (a GGUF ``tokenizer.chat_template``)."""
    if template is None:
        raise InvalidRequest(
            "this model has no chat template (tokenizer.chat_template); pass a plain prompt instead"
        )
    turns = [ChatMessage.coerce(m) for m in messages]
    if not turns:
        raise InvalidRequest("a chat needs at least one message")
    rendered: str = _compile(template).render(
        messages=[{"role": t.role, "content": t.content} for t in turns],
        add_generation_prompt=add_generation_prompt,
    )
    return rendered
