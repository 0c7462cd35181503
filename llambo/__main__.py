"""``python -m llambo``: the ``llambo`` command line (see :mod:`llambo.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
