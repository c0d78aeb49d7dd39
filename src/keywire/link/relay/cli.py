"""``keywire relay`` (and ``python -m keywire.link.relay``): run a relay until a signal.

The relay's own command line lives inside the relay package so that its ``__main__`` needs
nothing from the Link client's CLI above it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from . import config


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)
    parser.set_defaults(func=run_relay)


async def run_relay(args: argparse.Namespace) -> int:
    """Run a relay until SIGTERM/SIGINT; prints its WebSocket URL as the first stdout line."""
    from .server import RelayServer, setup_json_logging  # only when a relay runs: CLI start-up

    try:
        cfg = config.load(args=args)
    except ValueError as exc:
        print(f"keywire relay: {exc}", file=sys.stderr)
        return 2
    setup_json_logging()
    server = RelayServer(cfg)
    try:
        port = await server.start()
    except OSError as exc:  # a port in use is the caller's to fix, like a bad argument
        print(
            f"keywire relay: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    print(f"ws://{shown}:{port}/v1/link", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    try:
        await asyncio.wait_for(server.stop(grace=4.5), 5.0)
    except TimeoutError:
        pass
    return 0


def relay_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="keywire relay", description="Run a Link relay (content-blind)."
    )
    add_relay_arguments(parser)
    args = parser.parse_args(argv)
    return asyncio.run(run_relay(args))


__all__ = ["add_relay_arguments", "relay_main", "run_relay"]
