"""Loaded models served over Styx, the 9P2000 file protocol of Plan 9 and Inferno.

Any 9P client (plan9port's ``9p`` and ``9pfuse``, Plan 9, Inferno, Linux v9fs) can load models and
run inference with plain file operations. :mod:`.fcall` is the message codec, :mod:`.server` the
asyncio server (connections, fids, tags, flush), :mod:`.tree` the llambo file tree (its nodes in
:mod:`.nodes`, its open files in :mod:`.files`, ctl commands in :mod:`.commands`, generation
requests in :mod:`.requests`), :mod:`.client` a small synchronous client and :mod:`.serve` the
command line. See docs/STYX.md.
"""

from __future__ import annotations

from .client import Client
from .errors import StyxError
from .server import Limits, ServerThread, StyxServer

__all__ = ["Client", "Limits", "ServerThread", "StyxError", "StyxServer"]
