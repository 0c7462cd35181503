"""``python -m llambo.styx``: run the Styx server (see :mod:`llambo.styx.serve`)."""

from __future__ import annotations

import sys

from .serve import main

if __name__ == "__main__":
    sys.exit(main())
