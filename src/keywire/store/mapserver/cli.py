"""``keywire map-server``: run the embedded HTTP map server for store streams."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import signal
import sys
from typing import Any

from ..tls import server_context
from .mapauth import TOKEN_ENV, load_token
from .mapserver import MapServer

HELP = "run a map server: the HTTP key-value store that carries store streams"
DESCRIPTION = """\
Serve PUT /v1/<64 hex> and long-poll GET /v1/<64 hex>?wait=SECONDS, the store behind
addresses such as http://HOST:PORT~stream:SECRET. The URL is printed as the first line of
stdout. Entries expire TTL seconds after their last put; with --db they are kept in SQLite
and survive a restart.

With --cert and --key it serves https (clients verify the certificate; give them a private CA
with the store.cafile setting). With --token-file, or $KEYWIRE_MAP_TOKEN, every write needs
'Authorization: Bearer TOKEN' (clients: the store.token setting) and gets 401 without it;
--token-read makes reads need it too. The token is never printed or logged.
"""

#: the server's limits: flag, type, default, metavar, help
LIMITS: tuple[tuple[str, type, float, str, str], ...] = (
    ("--ttl", float, 3600.0, "SECONDS", "lifetime of an entry after its last put (default 3600)"),
    ("--max-value", int, 1 << 16, "BYTES", "largest value; larger puts get 413 (default 65536)"),
    ("--max-bytes", int, 256 << 20, "BYTES", "bytes stored before puts get 507 (default 256 MiB)"),
    ("--max-waiters", int, 4096, "N", "long-poll gets waiting at once before 503 (default 4096)"),
    ("--max-connections-per-ip", int, 256, "N", "open connections one IP may hold (default 256)"),
)


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "map-server",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)"
    )
    parser.add_argument(
        "--db", metavar="PATH", default=None, help="SQLite file that keeps entries across restarts"
    )
    for flag, kind, default, metavar, text in LIMITS:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    parser.add_argument(
        "--cert",
        metavar="FILE",
        default=None,
        help="PEM certificate chain: serve https (needs --key)",
    )
    parser.add_argument("--key", metavar="FILE", default=None, help="PEM private key of --cert")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help="file holding the bearer token every write must carry "
        f"(default: ${TOKEN_ENV} if set; without either, writes are open)",
    )
    parser.add_argument(
        "--token-read",
        action="store_true",
        help="reads need the token too (default: anyone may read)",
    )
    parser.add_argument(
        "--signed",
        action="store_true",
        help="write capabilities: every put must be signed by its address's blinded key, "
        "and addresses are write-once (docs/store.md, Write capabilities)",
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"keywire map-server: --port {args.port} is not a port", file=sys.stderr)
        return 2
    if args.ttl <= 0 or args.max_value < 1 or args.max_bytes < args.max_value:
        print(
            "keywire map-server: need --ttl > 0 and 1 <= --max-value <= --max-bytes",
            file=sys.stderr,
        )
        return 2
    if args.max_connections_per_ip < 1:
        print("keywire map-server: --max-connections-per-ip must be at least 1", file=sys.stderr)
        return 2
    if (args.cert is None) != (args.key is None):
        print("keywire map-server: --cert and --key go together", file=sys.stderr)
        return 2
    try:
        tls = server_context(args.cert, args.key) if args.cert is not None else None
        token = load_token(args.token_file)
    except ValueError as exc:
        print(f"keywire map-server: {exc}", file=sys.stderr)
        return 2
    if args.token_read and token is None:
        print(
            f"keywire map-server: --token-read needs --token-file or ${TOKEN_ENV}", file=sys.stderr
        )
        return 2
    server = MapServer(
        args.host,
        args.port,
        ttl=args.ttl,
        max_value=args.max_value,
        max_bytes=args.max_bytes,
        max_waiters=args.max_waiters,
        max_connections_per_ip=args.max_connections_per_ip,
        db=args.db,
        tls=tls,
        token=token,
        token_read=args.token_read,
        signed=args.signed,
    )
    try:
        await server.start()
    except OSError as exc:  # a port in use is the caller's to fix, like a bad argument
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        print(
            f"keywire map-server: cannot listen on {args.host}:{args.port}: {why}", file=sys.stderr
        )
        return 2
    print(server.url, flush=True)
    access = (
        "open to anyone"
        if token is None
        else "reads and writes need the token"
        if args.token_read
        else "writes need the token, reads are open"
    )
    print(
        f"map server: max value {args.max_value} bytes, ttl {args.ttl:g} s"
        + (f", persisted in {args.db}" if args.db else ", in memory only")
        + (", TLS" if tls is not None else "")
        + f"; {access}",
        file=sys.stderr,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m keywire.store.mapserver``) until the main CLI wires it."""
    parser = argparse.ArgumentParser(prog="keywire")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = asyncio.run(args.func(args))
    return result


if __name__ == "__main__":
    sys.exit(main())
