"""``python -m keywire.store.redismodule build [--out DIR]``: compile the module, print its path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import BuildError, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keywire.store.redismodule",
        description="Build keywire-redis, the Redis module that checks signed store puts; "
        "load it with: redis-server --loadmodule PATH",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    make = sub.add_parser("build", help="compile the module (once per source version)")
    make.add_argument("--out", type=Path, help="directory for the .so (default ~/.cache/keywire)")
    make.add_argument("--cc", help="C compiler (default $CC, then cc)")
    args = parser.parse_args(argv)
    try:
        print(build(args.out, compiler=args.cc))
    except BuildError as exc:
        print(f"keywire-redis: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
