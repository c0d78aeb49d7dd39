"""``keywire doctor`` on the command line (hooked into ``keywire.cli`` by module name)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 2, 3


def add_parser(subparsers: Any) -> None:
    """Add ``doctor`` to the keywire CLI."""
    p = subparsers.add_parser(
        "doctor",
        help="report this machine's public address, NAT behaviour and relay reachability",
        description="Ask STUN servers (a relay's --stun-port) from one UDP socket and check "
        "relays: public address, NAT mapping (endpoint-independent or not), filtering, UDP "
        "and relay reachability. Without --stun/--relay, $KEYWIRE_STUN and $KEYWIRE_RELAY "
        "(comma-separated) are used.",
    )
    p.add_argument(
        "--stun",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a STUN server (port 3478 if none); give two to learn the mapping",
    )
    p.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="URL",
        help="a relay's ws(s):// URL; also asked for STUN on port 3478 if no --stun",
    )
    p.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for each answer (default 2)"
    )
    p.add_argument(
        "--local-port",
        type=int,
        default=0,
        help="the UDP port to ask from (default: any; give your KPS port to test it)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_doctor)


async def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import default_servers, render, run_doctor  # only when the doctor runs

    try:
        stun, relays = default_servers(list(args.stun), list(args.relay))
    except ValueError as exc:
        print(f"keywire doctor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not stun and not relays:
        print(
            "keywire doctor: give --stun HOST[:PORT] or --relay URL (or set $KEYWIRE_STUN)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not 0 < args.timeout <= 60 or not 0 <= args.local_port < 65536:
        print(
            "keywire doctor: --timeout must be in (0, 60] and --local-port in 0..65535",
            file=sys.stderr,
        )
        return EXIT_USAGE
    report = await run_doctor(stun, relays, timeout=args.timeout, local_port=args.local_port)
    if args.json:
        print(json.dumps(report.as_dict(), separators=(",", ":")))
    else:
        print(render(report))
    reachable = report.udp == "ok" or any(r.reachable for r in report.relays)
    return EXIT_OK if reachable else EXIT_UNREACHABLE
