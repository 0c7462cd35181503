"""``llambo info`` and ``llambo tokenize``."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import llambo

import llambo as api


def test_info_json_is_the_model_info(tiny_model: Path) -> None:
    out = llambo("info", str(tiny_model), "--json", "--backend", "reference")
    assert out.returncode == 0, out
    data = json.loads(out.stdout)
    assert data["architecture"] == "llama"
    assert data["name"] == "synthetic-llama"
    assert data["n_layer"] == 2
    assert data["has_chat_template"] is True
    assert data["backend"] == "reference"


def test_info_summary(tiny_model: Path) -> None:
    out = llambo("info", str(tiny_model), "--metadata")
    assert out.returncode == 0, out
    lines = out.stdout.splitlines()
    assert lines[0] == "synthetic-llama"
    assert any(line.split()[:2] == ["architecture", "llama"] for line in lines)
    assert any("general.architecture = llama" in line for line in lines)


def test_tokenize_ids_pieces_and_json(tiny_model: Path) -> None:
    text = "hello the world"
    with api.Model(tiny_model, backend="reference") as model:
        ids = model.tokenize(text)
    plain = llambo("tokenize", "-m", str(tiny_model), text)
    assert plain.returncode == 0, plain
    assert [int(t) for t in plain.stdout.split()] == ids

    as_json = llambo("tokenize", "-m", str(tiny_model), "--json", text)
    assert json.loads(as_json.stdout) == ids

    pieces = llambo("tokenize", "-m", str(tiny_model), "--pieces", "--json", text)
    data = json.loads(pieces.stdout)
    assert [item["id"] for item in data] == ids
    assert "".join(item["piece"] for item in data) == text

    lines = llambo("tokenize", "-m", str(tiny_model), "--pieces", text).stdout.splitlines()
    assert len(lines) == len(ids)


def test_tokenize_special_tokens_from_stdin(tiny_model: Path) -> None:
    out = llambo(
        "tokenize", "-m", str(tiny_model), "--parse-special", "--pieces", "--json", stdin="<|im_start|>hi"
    )
    assert out.returncode == 0, out
    assert json.loads(out.stdout)[0]["piece"] == "<|im_start|>"
