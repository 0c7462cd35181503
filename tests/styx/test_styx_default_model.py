"""The real default model over 9P: load it through ctl and ask it a question, as a client would."""

from __future__ import annotations

import pytest
from styx_support import StartServer

from llambo.api import SamplingParams
from llambo.errors import LlamboError
from llambo.generation import generate
from llambo.registry import ModelRegistry
from llambo.styx import Client


@pytest.mark.slow
@pytest.mark.native
def test_default_model_answers_over_9p(start_server: StartServer, registry: ModelRegistry) -> None:
    from llambo.default_model import ensure_default_model

    try:
        path = ensure_default_model(progress=False)
    except LlamboError as exc:
        pytest.fail(f"the default model could not be fetched: {exc}")
    server = start_server(models_root=path.parent)
    prompt = "The capital of France is"
    with Client(str(server.address)) as client:
        model_id = client.load(str(path), n_ctx=512)
        assert client.info(model_id)["architecture"] == "llama"
        answer = client.ask(model_id, prompt, max_tokens=12, temperature=0)
        direct = generate(registry.get(model_id), prompt, SamplingParams(max_tokens=12, temperature=0)).text
        assert answer == direct
        assert "Paris" in answer
        status = client.status(model_id)
        assert status["requests"] == "1" and int(status["tokens"]) > 0
        client.free(model_id)
