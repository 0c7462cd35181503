"""What the tree is made of: node kinds, nodes and their qids, and the server's state per model.

A :class:`Node` is a value (kind, and the model it belongs to), made afresh by each walk; its qid
path is the model's serial number and the kind, so a model id that is freed and loaded again
gives new qids. :class:`ModelState` and :class:`Peer` hold the requests readers can still reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from ..api import LoadedModel
from .fcall import DMDIR, QTDIR, QTFILE, Qid

if TYPE_CHECKING:
    from .requests import Request

__all__ = ["Kind", "ModelState", "Node", "Peer"]


class Kind(IntEnum):
    """What a node is; also the low bits of its qid path."""

    ROOT = 0
    CTL = 1
    CLONE = 2
    MODELS = 3
    MODEL = 4
    DATA = 5
    INFO = 6
    STATUS = 7


_NAMES = {
    Kind.ROOT: "/",
    Kind.CTL: "ctl",
    Kind.CLONE: "clone",
    Kind.MODELS: "models",
    Kind.DATA: "data",
    Kind.INFO: "info",
    Kind.STATUS: "status",
}
_DIRS = frozenset({Kind.ROOT, Kind.MODELS, Kind.MODEL})
_READ_ONLY = frozenset({Kind.INFO, Kind.STATUS})


@dataclass(eq=False)
class ModelState:
    """What the server knows of one loaded model id: its latest request and its counters."""

    model_id: int
    model: LoadedModel
    serial: int
    created: int
    latest: Request | None = None
    requests: int = 0
    tokens: int = 0
    last_tps: float = 0.0
    active: int = 0
    info: dict[str, Any] | None = None


@dataclass(frozen=True)
class Node:
    """A file or directory of the tree (model nodes carry the model they belong to)."""

    kind: Kind
    state: ModelState | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind in _DIRS

    @property
    def read_only(self) -> bool:
        return self.kind in _READ_ONLY

    @property
    def name(self) -> str:
        if self.kind is Kind.MODEL:
            assert self.state is not None
            return str(self.state.model_id)
        return _NAMES[self.kind]

    @property
    def qid(self) -> Qid:
        serial = self.state.serial if self.state is not None else 0
        return Qid(QTDIR if self.is_dir else QTFILE, 0, (serial << 8) | int(self.kind))

    @property
    def mode(self) -> int:
        if self.is_dir:
            return DMDIR | 0o555
        return 0o444 if self.read_only else 0o666


class Peer:
    """One client connection: the latest request it made to each model (for fresh reads of data)."""

    def __init__(self) -> None:
        self.latest: dict[ModelState, Request] = {}

    def remember(self, state: ModelState, request: Request) -> None:
        request.retain()
        old = self.latest.get(state)
        self.latest[state] = request
        if old is not None:
            old.release()

    def close(self) -> None:
        """Forget every request (the connection is gone)."""
        requests, self.latest = list(self.latest.values()), {}
        for request in requests:
            request.release()
