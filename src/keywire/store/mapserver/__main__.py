"""``python -m keywire.store.mapserver``: the map server without the rest of the CLI."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
