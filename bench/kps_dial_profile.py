"""CPU of one ``kps:`` dial on each side, sans-IO: no sockets, no event loop (issue 17).

A dialer's ``KpsSession`` and a listener-like server session (one shared server configuration,
``ProbeAnsweringQuicConnection``, as ``KpsListener`` makes them) hand their datagrams to each
other under a fake clock: handshake, a first stream with one byte, the dialer's close. Each
side's CPU (``time.process_time``) is counted only while that side runs, so the figures split
the dial by side; ``--profile`` also runs each side under its own ``cProfile`` and prints its
top functions by own time. Used for docs/performance.md ("kps: connect, fifth pass")::

    .venv/bin/python bench/kps_dial_profile.py --dials 300
    .venv/bin/python bench/kps_dial_profile.py --dials 300 --profile /tmp/dial
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

from qh3._hazmat import pull_quic_header

from keywire.identity import Identity
from keywire.kps import KpsSettings
from keywire.kps.quic import GatedQuicConnection, client_configuration, server_configuration
from keywire.kps.quic.probe import ProbeAnsweringQuicConnection
from keywire.kps.quic.session import KpsSession

CLIENT = ("127.0.0.1", 50000)
SERVER = ("127.0.0.1", 4433)


class Side:
    """Counts one side's CPU and, when asked, profiles only that side."""

    def __init__(self, profile: bool) -> None:
        self.profiler = cProfile.Profile() if profile else None
        self.spent = 0.0
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.process_time()
        if self.profiler is not None:
            self.profiler.enable()

    def __exit__(self, *exc: object) -> None:
        if self.profiler is not None:
            self.profiler.disable()
        self.spent += time.process_time() - self._started


def one_dial(identity: Identity, settings: KpsSettings, config: object, c: Side, s: Side) -> None:
    """Handshake, first stream, close; raises if the server did not see all three."""
    pin, now = identity.cert_digest, 1000.0
    with c:
        quic = GatedQuicConnection(
            configuration=client_configuration(pin, settings),
            max_streams=settings.max_streams,
            pin=pin,
        )
        client = KpsSession(quic, connection_window=settings.connection_window)
        client.connect(SERVER, now)
        out = client.datagrams_to_send(now)
    server: KpsSession | None = None
    stream: int | None = None
    seen: set[str] = set()
    for step in range(40):
        now += 0.002
        with s:
            if out and server is None:
                dcid = pull_quic_header(out[0][0], 0, 8)[3]
                server = KpsSession(
                    ProbeAnsweringQuicConnection(
                        configuration=config,
                        original_destination_connection_id=dcid,
                        max_streams=settings.max_streams,
                    ),
                    connection_window=settings.connection_window,
                    max_backlog=settings.max_streams,
                )
            assert server is not None
            if out:
                server.receive_datagrams([data for data, _ in out], CLIENT, now)
            deadline = server.deadline()
            if deadline is not None and deadline <= now:
                server.handle_timer(now)
            back = server.datagrams_to_send(now)
            while (event := server.next_event()) is not None:
                seen.add(type(event).__name__)
        with c:
            if back:
                client.receive_datagrams([data for data, _ in back], SERVER, now)
            deadline = client.deadline()
            if deadline is not None and deadline <= now:
                client.handle_timer(now)
            while client.next_event() is not None:
                pass
            if stream is None and quic.established:
                stream = client.open_stream()
                client.send(stream, b"x")
            elif stream is not None and step == 8:
                client.close()
            out = client.datagrams_to_send(now)
        if not out and not back and step > 10:
            break
    missing = {"StreamOpened", "StreamData", "ConnectionTerminated"} - seen
    if missing:
        raise RuntimeError(f"the server never saw {missing}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dials", type=int, default=300)
    parser.add_argument("--profile", metavar="PREFIX", help="write PREFIX.{client,server}.prof")
    parser.add_argument("--top", type=int, default=25, help="functions listed per side")
    args = parser.parse_args()
    settings, identity = KpsSettings(), Identity.generate()
    config = server_configuration(identity, settings)
    for _ in range(20):  # imports, caches, first-use costs out of the figures
        one_dial(identity, settings, config, Side(False), Side(False))
    c, s = Side(args.profile is not None), Side(args.profile is not None)
    per_c, per_s = [], []
    for _ in range(args.dials):
        before_c, before_s = c.spent, s.spent
        one_dial(identity, settings, config, c, s)
        per_c.append((c.spent - before_c) * 1e3)
        per_s.append((s.spent - before_s) * 1e3)
    both = [a + b for a, b in zip(per_c, per_s, strict=True)]
    print(
        f"CPU ms per sans-IO dial (median of {args.dials}): client "
        f"{statistics.median(per_c):.3f}, server {statistics.median(per_s):.3f}, "
        f"both {statistics.median(both):.3f}"
    )
    if args.profile:
        for name, side in (("client", c), ("server", s)):
            assert side.profiler is not None
            side.profiler.dump_stats(f"{args.profile}.{name}.prof")
            print(f"--- {name}: top {args.top} by own time (profiled, so inflated)")
            pstats.Stats(side.profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
