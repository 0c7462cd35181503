"""The model registry with a fake backend: ids, reference counts, limits, reservations, threads, exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llambo.api import LoadParams, ModelInfo, SamplingParams
from llambo.backends import backend_names, get_backend
from llambo.errors import InvalidModelId, ModelFileNotFound, TooManyModels
from llambo.registry import MAX_MODELS, ModelRegistry


class FakeModel:
    backend = "fake"

    def __init__(self, path: Path, params: LoadParams) -> None:
        self.path = path
        self.params = params
        self.closes = 0

    @property
    def n_ctx(self) -> int:
        return 128

    @property
    def n_vocab(self) -> int:
        return 10

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return [1]

    def detokenize(
        self, tokens: Sequence[int], *, remove_special: bool = False, unparse_special: bool = False
    ) -> str:
        return ""

    def token_bytes(self, token: int) -> bytes:
        return b""

    def is_eog(self, token: int) -> bool:
        return False

    def session(self, params: SamplingParams) -> Any:
        raise NotImplementedError

    def logits(self, tokens: Sequence[int]) -> Any:
        raise NotImplementedError

    def chat_template(self) -> str | None:
        return None

    def info(self) -> ModelInfo:
        raise NotImplementedError

    def close(self) -> None:
        self.closes += 1


class FakeBackend:
    name = "native"

    def __init__(self, delay: float = 0.0) -> None:
        self.loads: list[FakeModel] = []
        self.delay = delay
        self.fail_next: Exception | None = None
        self._lock = threading.Lock()

    def availability(self) -> str | None:
        return None

    def load(self, path: Path, params: LoadParams) -> FakeModel:
        if self.delay:
            time.sleep(self.delay)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if not path.name.endswith(".gguf"):
            raise ModelFileNotFound(f"no model file at {path}")
        model = FakeModel(path, params)
        with self._lock:
            self.loads.append(model)
        return model


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def registry(backend: FakeBackend) -> ModelRegistry:
    return ModelRegistry(lambda name: backend)


def test_ids_start_at_zero_and_are_reused_lowest_first(registry: ModelRegistry) -> None:
    ids = [registry.load(f"/m/{i}.gguf") for i in range(4)]
    assert ids == [0, 1, 2, 3]
    registry.free(1)
    registry.free(2)
    assert registry.load("/m/new.gguf") == 1
    assert registry.load("/m/newer.gguf") == 2
    assert registry.load("/m/newest.gguf") == 4


def test_the_same_file_and_params_share_an_id(registry: ModelRegistry, backend: FakeBackend) -> None:
    first = registry.load("/m/a.gguf", LoadParams(n_ctx=64))
    assert registry.load("/m/../m/a.gguf", LoadParams(n_ctx=64)) == first  # resolved paths compare
    assert registry.refs(first) == 2
    assert len(backend.loads) == 1
    assert registry.load("/m/a.gguf", LoadParams(n_ctx=128)) != first  # other params: other model
    assert len(backend.loads) == 2


def test_free_to_zero_closes(registry: ModelRegistry, backend: FakeBackend) -> None:
    model_id = registry.load("/m/a.gguf")
    registry.load("/m/a.gguf")
    model = backend.loads[0]
    registry.free(model_id)
    assert model.closes == 0 and registry.refs(model_id) == 1
    registry.free(model_id)
    assert model.closes == 1
    with pytest.raises(InvalidModelId):
        registry.get(model_id)


def test_unknown_ids(registry: ModelRegistry) -> None:
    registry.load("/m/a.gguf")
    registry.load("/m/b.gguf")
    with pytest.raises(InvalidModelId, match=r"model id 7 is not a loaded model; loaded ids: 0, 1") as caught:
        registry.get(7)
    assert isinstance(caught.value, KeyError)
    registry.free(0)
    with pytest.raises(InvalidModelId, match=r"loaded ids: 1$"):
        registry.free(0)
    with pytest.raises(InvalidModelId):
        registry.refs(-1)
    with pytest.raises(TypeError):
        registry.get("0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        registry.get(True)


def test_at_most_32_models(registry: ModelRegistry, backend: FakeBackend) -> None:
    assert MAX_MODELS == 32
    ids = [registry.load(f"/m/{i}.gguf") for i in range(32)]
    assert ids == list(range(32))
    with pytest.raises(TooManyModels, match=r"all 32 model ids are in use.*free one"):
        registry.load("/m/33.gguf")
    assert len(backend.loads) == 32  # nothing was read for the refused load
    assert registry.load("/m/5.gguf") == 5  # an already loaded file still gets its id
    registry.free(5)
    registry.free(5)
    assert registry.load("/m/33.gguf") == 5


def test_a_failed_load_frees_its_id(registry: ModelRegistry, backend: FakeBackend) -> None:
    with pytest.raises(ModelFileNotFound):
        registry.load("/m/not-a-model.txt")
    backend.fail_next = RuntimeError("boom")
    with pytest.raises(RuntimeError):
        registry.load("/m/a.gguf")
    assert registry.entries() == []
    assert registry.load("/m/a.gguf") == 0


def test_entries(registry: ModelRegistry) -> None:
    registry.load("/m/a.gguf", LoadParams(n_ctx=64))
    registry.load("/m/a.gguf", LoadParams(n_ctx=64))
    registry.load("/m/b.gguf")
    entries = registry.entries()
    assert [(e.id, e.path, e.backend, e.refs) for e in entries] == [
        (0, str(Path("/m/a.gguf").resolve()), "native", 2),
        (1, str(Path("/m/b.gguf").resolve()), "native", 1),
    ]
    assert entries[0].to_dict()["params"]["n_ctx"] == 64


def test_reservations(registry: ModelRegistry, backend: FakeBackend) -> None:
    registry.load("/m/a.gguf")
    reserved = registry.reserve()
    assert reserved == 1
    assert registry.load("/m/b.gguf") == 2  # a reserved id counts as used
    with pytest.raises(InvalidModelId, match="is reserved, not loaded"):
        registry.get(reserved)
    backend.fail_next = RuntimeError("boom")
    with pytest.raises(RuntimeError):
        registry.load_into(reserved, "/m/c.gguf")
    assert registry.load_into(reserved, "/m/c.gguf") == reserved  # still reserved after a failure
    assert registry.refs(reserved) == 1
    with pytest.raises(InvalidModelId, match="not a reserved id"):
        registry.load_into(reserved, "/m/d.gguf")
    other = registry.reserve()
    registry.release_reservation(other)
    with pytest.raises(InvalidModelId):
        registry.release_reservation(other)
    assert registry.reserve() == other


def test_load_into_shares_an_already_loaded_model(registry: ModelRegistry, backend: FakeBackend) -> None:
    first = registry.load("/m/a.gguf")
    reserved = registry.reserve()
    registry.load_into(reserved, "/m/a.gguf")
    assert len(backend.loads) == 1
    assert registry.get(reserved) is registry.get(first)
    registry.free(first)
    assert backend.loads[0].closes == 0  # the other id still holds it
    assert registry.load("/m/a.gguf") == reserved  # it is now the id for that file
    registry.free(reserved)
    registry.free(reserved)
    assert backend.loads[0].closes == 1


def test_reservations_count_towards_the_limit(registry: ModelRegistry) -> None:
    for _ in range(32):
        registry.reserve()
    with pytest.raises(TooManyModels):
        registry.reserve()
    with pytest.raises(TooManyModels):
        registry.load("/m/a.gguf")


def test_concurrent_loads_of_one_file_load_it_once() -> None:
    backend = FakeBackend(delay=0.2)
    registry = ModelRegistry(lambda name: backend)
    start = threading.Barrier(8)

    def load(_: int) -> int:
        start.wait()
        return registry.load("/m/a.gguf")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(load, range(8)))
    assert ids == [0] * 8
    assert len(backend.loads) == 1
    assert registry.refs(0) == 8


def test_the_lock_is_not_held_while_loading() -> None:
    backend = FakeBackend(delay=0.5)
    registry = ModelRegistry(lambda name: backend)
    thread = threading.Thread(target=registry.load, args=("/m/slow.gguf",))
    thread.start()
    time.sleep(0.1)
    began = time.perf_counter()
    assert registry.entries() == []  # the slow load is in progress, not yet listed
    reserved = registry.reserve()
    assert reserved == 1  # id 0 is taken by the load in progress
    assert time.perf_counter() - began < 0.3
    thread.join()
    assert registry.refs(0) == 1


def test_close_all(registry: ModelRegistry, backend: FakeBackend) -> None:
    registry.load("/m/a.gguf")
    registry.load("/m/a.gguf")
    registry.load("/m/b.gguf")
    assert registry.close_all() == 2
    assert [m.closes for m in backend.loads] == [1, 1]
    assert registry.close_all() == 0
    assert registry.entries() == []
    with pytest.raises(RuntimeError, match="shut down"):
        registry.load("/m/c.gguf")


def test_the_exit_hook_frees_every_model_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import llambo.registry as registry

        class Model:
            def __init__(self, path):
                self.path = path
            def close(self):
                print("closed", self.path.name, flush=True)

        class Backend:
            name = "native"
            def load(self, path, params):
                return Model(path)

        reg = registry.default_registry()
        assert registry.default_registry() is reg
        reg._backends = lambda name: Backend()
        reg.load("/m/a.gguf")
        reg.load("/m/a.gguf")
        reg.load("/m/b.gguf")
        reg.free(reg.load("/m/c.gguf"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert sorted(done.stdout.splitlines()) == ["closed a.gguf", "closed b.gguf", "closed c.gguf"]


def test_backends_by_name() -> None:
    assert backend_names() == ("native", "reference")
    assert get_backend("reference").name == "reference"
    with pytest.raises(ValueError, match="unknown backend 'cuda'; valid backends: native, reference"):
        get_backend("cuda")
    with pytest.raises(TypeError):
        get_backend(None)  # type: ignore[arg-type]
