"""The functional API (llambo.load_model, infer, ...) on the default model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import llambo

pytestmark = pytest.mark.native

QUESTION = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def test_load_infer_free(default_model_path: Path) -> None:
    model_id = llambo.load_model(default_model_path, n_ctx=512)
    try:
        assert llambo.load_model(default_model_path, n_ctx=512) == model_id  # same file, same settings
        info = json.loads(llambo.get_model_info(model_id))
        assert info["model_id"] == model_id and info["refs"] == 2
        assert info["architecture"] == "llama" and info["n_ctx"] == 512
        llambo.free_model(model_id)
        assert json.loads(llambo.get_model_info(model_id))["refs"] == 1

        other = llambo.load_model(default_model_path, n_ctx=256)  # other settings: another model
        assert other != model_id
        llambo.free_model(other)

        text = llambo.infer(model_id, QUESTION, max_tokens=32, temperature=0)
        assert "Paris" in text
        assert llambo.infer(model_id, QUESTION, max_tokens=32, temperature=0) == text
        seeded = llambo.infer(model_id, QUESTION, max_tokens=16, temperature=0.8, seed=1234, top_k=20)
        assert llambo.infer(model_id, QUESTION, max_tokens=16, temperature=0.8, seed=1234, top_k=20) == seeded

        tokens = llambo.tokenize(model_id, "Hello world", add_special=False)
        assert llambo.detokenize(model_id, tokens) == "Hello world"
        entry = next(e for e in llambo.list_models() if e["id"] == model_id)
        assert entry["backend"] == "native" and entry["refs"] == 1
        assert entry["path"] == str(default_model_path.resolve())
        assert entry["params"]["n_ctx"] == 512
        json.dumps(llambo.list_models())
    finally:
        llambo.free_model(model_id)
    with pytest.raises(llambo.InvalidModelId, match=f"model id {model_id} is not a loaded model"):
        llambo.infer(model_id, "x")


def test_import_llambo_is_cheap() -> None:
    code = (
        "import sys, llambo\n"
        "heavy = ('numpy', 'ctypes', 'llambo.native.library', 'llambo.native.model')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


@pytest.mark.slow
def test_models_left_loaded_are_freed_at_exit(default_model_path: Path) -> None:
    code = (
        "import llambo, threading\n"
        "from llambo.api import SamplingParams\n"
        "from llambo.generation import TextStream\n"
        "from llambo.registry import default_registry\n"
        f"a = llambo.load_model({str(default_model_path)!r}, n_ctx=256)\n"
        f"b = llambo.load_model({str(default_model_path)!r}, n_ctx=512)\n"
        "stream = TextStream(default_registry().get(b), 'Once upon a time', SamplingParams(max_tokens=50))\n"
        "next(stream)  # exit with a session open\n"
        "print('ok', a, b)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")
