"""``llambo serve``: the Styx (9P2000) server; every argument goes to :func:`llambo.styx.serve.main`."""

from __future__ import annotations

from collections.abc import Sequence


def serve(argv: Sequence[str]) -> int:
    """Run the server with ``argv`` (its own options, ``--help`` included)."""
    from ...styx.serve import main

    return main(list(argv))
