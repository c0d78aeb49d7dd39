"""``keywire relay`` (and ``python -m keywire.link.relay``): run a relay until a signal.

The relay's own command line lives inside the relay package so that its ``__main__`` needs
nothing from the Link client's CLI above it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, Literal

from . import config
from .cluster.options import add_cluster_arguments, cluster_config, make_server

if TYPE_CHECKING:
    from ...nat.stunio import StunServer


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)
    add_cluster_arguments(parser)
    parser.add_argument(
        "--stun-port",
        type=int,
        action="append",
        metavar="N",
        help="also answer STUN binding requests on UDP port N (give it twice for two ports, "
        "which lets clients test their NAT's filtering; docs/nat.md)",
    )
    parser.set_defaults(func=run_relay)


async def run_relay(args: argparse.Namespace) -> int:
    """Run a relay until SIGTERM/SIGINT; prints its WebSocket URL as the first stdout line."""
    from .server import setup_json_logging  # only when a relay runs: CLI start-up

    try:
        cfg = config.load(args=args)
        cluster = cluster_config(args)
    except ValueError as exc:
        print(f"keywire relay: {exc}", file=sys.stderr)
        return 2
    setup_json_logging()
    server = make_server(cfg, cluster)
    try:
        port = await server.start()
    except OSError as exc:  # a port in use is the caller's to fix, like a bad argument
        print(
            f"keywire relay: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    stun = await _start_stun(cfg.host, getattr(args, "stun_port", None) or [])
    if stun is False:
        await server.stop(grace=0)
        return 2
    print(f"ws://{shown}:{port}/v1/link", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if stun:
        stun.close()
    try:
        await asyncio.wait_for(server.stop(grace=4.5), 5.0)
    except TimeoutError:
        pass
    return 0


async def _start_stun(host: str, ports: list[int]) -> StunServer | Literal[False] | None:
    """The relay's STUN service (``--stun-port``), None without one, False if it cannot bind."""
    if not ports:
        return None
    from ...nat.stunio import StunServer

    try:
        stun = StunServer(host, ports)
        bound = await stun.start()
    except (OSError, ValueError) as exc:
        print(f"keywire relay: cannot serve STUN on {host} {ports}: {exc}", file=sys.stderr)
        return False
    logging.getLogger("keywire.link.relay").info(
        "stun listening", extra={"fields": {"host": host, "udp_ports": bound}}
    )
    return stun


def relay_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="keywire relay", description="Run a Link relay (content-blind)."
    )
    add_relay_arguments(parser)
    args = parser.parse_args(argv)
    return asyncio.run(run_relay(args))


__all__ = ["add_relay_arguments", "relay_main", "run_relay"]
