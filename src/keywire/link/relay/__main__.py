"""``python -m keywire.link.relay``: run a relay (the same as ``keywire relay``)."""

from __future__ import annotations

import sys

from .cli import relay_main

if __name__ == "__main__":
    sys.exit(relay_main(sys.argv[1:]))
