"""``llambo pull``: fetch the default model into the cache (with progress) and print its path."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    """Print the verified default model's path, fetching it first when it is not cached."""
    from ...default_model import cached_default_model, ensure_default_model

    cached = cached_default_model()
    if cached is not None:
        print("llambo: the default model is already cached and verified", file=sys.stderr)
        path = cached
    else:
        path = ensure_default_model(progress=True)
    print(path)
    return 0
