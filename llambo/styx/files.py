"""The open files of the tree: what reads and writes of ``ctl``, ``clone``, ``data``, ``info`` and
``status`` do (directories are read by the server itself, through :meth:`Tree.children`).

Stream files (ctl, clone, data) keep a read *origin* per open file: offset 0 at open, and the
first read after a write fixes the offset at which the new output starts. So ``read(0)`` after
``write`` works, and so do clients that keep one file position for reads and writes (plan9port's
``9p rdwr``, a Linux fd opened read-write), whose first read after the write comes at the
offset the write left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .commands import int_word, parse_load, tokenize
from .errors import BUSY, PERMISSION, StyxError, invalid
from .nodes import Node, Peer
from .requests import Deliver, Request, parse_request

if TYPE_CHECKING:
    from .tree import Tree

__all__ = ["CloneFile", "CtlFile", "DataFile", "Directory", "OpenFile", "SnapshotFile"]


class OpenFile:
    """A file opened by one fid; the server calls read/write on it and clunk when the fid goes."""

    readable = True
    writable = False

    def __init__(self, tree: Tree, node: Node, peer: Peer) -> None:
        self.tree = tree
        self.node = node
        self.peer = peer

    def try_read(self, offset: int, count: int) -> bytes | None:
        """The answer to a read if it can be given at once, else None (then ``read`` is awaited)."""
        return None

    async def read(self, offset: int, count: int) -> bytes:
        raise StyxError.make(PERMISSION, f"{self.node.name} cannot be read")

    def read_later(self, offset: int, count: int, deliver: Deliver) -> Callable[[], None] | None:
        """Arrange for ``deliver`` to answer a read that must wait; a canceller, or None if this
        file cannot (then the server awaits :meth:`read` instead)."""
        return None

    async def write(self, offset: int, data: bytes) -> int:
        raise StyxError.make(PERMISSION, f"{self.node.name} is read-only")

    def clunk(self) -> None:
        """The fid is gone."""


class Directory(OpenFile):
    """An open directory: the server reads it entry by entry through :meth:`Tree.children`."""


def _command_text(data: bytes) -> str:
    """A ctl/clone write as text (InvalidArgument if it is not UTF-8)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("the command is not valid UTF-8") from None


class _Immediate(OpenFile):
    """A file whose every read is answered at once by :meth:`try_read`."""

    async def read(self, offset: int, count: int) -> bytes:
        result = self.try_read(offset, count)
        assert result is not None
        return result


class SnapshotFile(_Immediate):
    """A read-only text built afresh by each read at offset 0 (info, status)."""

    def __init__(self, tree: Tree, node: Node, peer: Peer, render: Callable[[], bytes]) -> None:
        super().__init__(tree, node, peer)
        self._render = render
        self._text: bytes | None = None

    def try_read(self, offset: int, count: int) -> bytes | None:
        if offset == 0 or self._text is None:
            self._text = self._render()
        return self._text[offset : offset + count]


class _Stream(_Immediate):
    """A file whose writes start something new and whose reads follow from the origin rule."""

    writable = True

    def __init__(self, tree: Tree, node: Node, peer: Peer) -> None:
        super().__init__(tree, node, peer)
        self._origin: int | None = 0

    def _position(self, offset: int) -> int:
        if self._origin is None:
            self._origin = offset
        position = offset - self._origin
        if position < 0:
            raise invalid(
                f"offset {offset} is before the start of this output (offset {self._origin}); "
                "read from there, or write again"
            )
        return position

    def _restart(self) -> None:
        self._origin = None


class CtlFile(_Stream):
    """``/ctl``: load and free commands; reads list the models, or give the id the last load made."""

    def __init__(self, tree: Tree, node: Node, peer: Peer) -> None:
        super().__init__(tree, node, peer)
        self._loaded: int | None = None
        self._text: bytes | None = None

    def try_read(self, offset: int, count: int) -> bytes | None:
        position = self._position(offset)
        if self._loaded is not None:
            text = f"{self._loaded}\n".encode()
        else:
            if position == 0 or self._text is None:
                self._text = self.tree.listing()
            text = self._text
        return text[position : position + count]

    async def write(self, offset: int, data: bytes) -> int:
        text = _command_text(data)
        for line in text.splitlines():
            words = tokenize(line)
            if not words:
                continue
            if words[0] == "load":
                command = parse_load(words, self.tree.load_params, self.tree.backend)
                self._loaded = await self.tree.load(command)
                self._restart()
            elif words[0] == "free":
                if len(words) != 2:
                    raise invalid("usage: free <id>")
                self.tree.free(int_word("the model id", words[1]))
                self._text = None
                self._restart()
            else:
                raise invalid(
                    f"unknown command {words[0]!r}; use load <path> [use_mmap] [n_gpu_layers] or free <id>"
                )
        return len(data)


class CloneFile(_Stream):
    """``/clone``: holds a reserved model id from open to clunk, or for good once loaded into."""

    def __init__(self, tree: Tree, node: Node, peer: Peer, model_id: int) -> None:
        super().__init__(tree, node, peer)
        self.model_id = model_id
        self._loaded = False
        self._loading = False
        self._clunked = False

    def try_read(self, offset: int, count: int) -> bytes | None:
        position = self._position(offset)
        return f"{self.model_id}\n".encode()[position : position + count]

    async def write(self, offset: int, data: bytes) -> int:
        text = _command_text(data)
        words = tokenize(text.strip())
        if not words or words[0] != "load":
            raise invalid("clone takes one command: load <path> [use_mmap] [n_gpu_layers]")
        if self._loaded or self._loading:
            raise StyxError.make(BUSY, f"this clone file already holds model {self.model_id}")
        command = parse_load(words, self.tree.load_params, self.tree.backend)
        self._loading = True
        try:
            await self.tree.load(command, into=self.model_id)
            self._loaded = True
        finally:
            self._loading = False
            if self._clunked and not self._loaded:
                self.tree.release(self.model_id)
        self._restart()
        return len(data)

    def clunk(self) -> None:
        self._clunked = True
        if not self._loaded and not self._loading:
            self.tree.release(self.model_id)


class DataFile(_Stream):
    """``/models/N/data``: each write starts a request; reads stream the output of this file's request."""

    def __init__(self, tree: Tree, node: Node, peer: Peer) -> None:
        super().__init__(tree, node, peer)
        assert node.state is not None
        self.state = node.state
        self.request: Request | None = None

    def _bind(self) -> Request | None:
        if self.request is None:
            request = self.peer.latest.get(self.state) or self.state.latest
            if request is not None:
                request.retain()
                self.request = request
        return self.request

    def try_read(self, offset: int, count: int) -> bytes | None:
        position = self._position(offset)
        request = self._bind()
        if request is None:
            return b""
        return request.available(position, count)

    async def read(self, offset: int, count: int) -> bytes:
        position = self._position(offset)
        request = self._bind()
        if request is None:
            return b""
        return await request.read(position, count)

    def read_later(self, offset: int, count: int, deliver: Deliver) -> Callable[[], None] | None:
        position = self._position(offset)
        request = self._bind()
        if request is None:
            deliver(b"")
            return lambda: None
        return request.subscribe(position, count, deliver)

    async def write(self, offset: int, data: bytes) -> int:
        tree, state = self.tree, self.state
        tree.current(state)
        prompt, params = parse_request(data, tree.max_tokens)
        if len(tree.live) >= tree.max_queued:
            raise StyxError.make(
                BUSY, f"{len(tree.live)} requests are running or queued (the limit); try again later"
            )
        request = Request(tree, state, prompt, params, asyncio.get_running_loop())
        await request.start()
        request.retain()
        old, self.request = self.request, request
        if old is not None:
            old.release()
        request.retain()
        previous, state.latest = state.latest, request
        if previous is not None:
            previous.release()
        self.peer.remember(state, request)
        self._restart()
        return len(data)

    def clunk(self) -> None:
        request, self.request = self.request, None
        if request is not None:
            request.release()
