"""KPS WebRTC-direct from real browsers: throughput, dial latency and many peers on one port.

    .venv/bin/python bench/bench_webrtc.py [--browsers chromium,firefox] [--size-mb 64]
                                           [--rounds 3] [--dials 50] [--peers 50] [--quick]
                                           [--python]

One keywire KPS listener (QUIC + WebRTC on one UDP port, this process, on 127.0.0.1) and, per
browser (Debian's Chromium and firefox-esr, through web/test/driver.mjs), two headless browser
processes, each with its own fresh profile:

* up / down: ``--size-mb`` MiB on one stream, browser → server (until the server's SHA-256 of it
  is back) and server → browser (until FIN), each as a ratio to the reference: a plain data
  channel between the two SEPARATE browser processes (SDP relayed by this harness, loopback
  only) moving the same bytes in the same 16 KiB messages with the same 1 MiB send buffering,
  until the receiver's one-byte confirmation is back;
* dial: ``--dials`` dials one after another for each wire (KPS wire v1, which edits the
  offer, and keywire's wire v2, which does not), interleaved in groups of 10; time from
  ``dial()`` to an open stream (p50, p90);
* peers: ``--peers`` connections dialed at once from one page to the one port, each echoing.

Throughput is the best of ``--rounds`` (each round: reference, up, down). ``--quick`` = 1 MiB,
1 round, 4 dials, 4 peers (the smoke test). Rates are MB = 10^6 bytes per second.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "webrtc"))

from wrtc_browser import WEB, Browser, CommandApp, pattern  # noqa: E402

from keywire.identity import Identity  # noqa: E402
from keywire.kps.quic.listener import KpsListener  # noqa: E402
from keywire.kps.settings import KpsSettings  # noqa: E402
from keywire.kps.webrtc.demo import serve_demo  # noqa: E402
from keywire.kps.webrtc.server import attach  # noqa: E402
from keywire.options import Options  # noqa: E402
from keywire.stream import Connection  # noqa: E402

HOST = "127.0.0.1"


def rate(size: int, ms: float) -> float:
    return size / (ms / 1000) / 1e6


def loopback_only(sdp: str) -> str:
    """``sdp`` with only UDP IPv4 host candidates, all on 127.0.0.1, for the peer to use.

    Firefox (allowed to use every interface, see driver.mjs) offers a 127.0.0.1 candidate: only
    those are kept. Chromium without a media permission gathers on the wildcard address and
    advertises the default route's address instead; that socket answers on 127.0.0.1 as well,
    so the address is replaced. Either way no packet of the reference leaves loopback.
    """
    lines = sdp.replace("\r\n", "\n").split("\n")
    candidates = [line.split() for line in lines if line.startswith("a=candidate:")]
    usable = [
        c
        for c in candidates
        if len(c) >= 8 and c[2].lower() == "udp" and c[7] == "host" and "." in c[4]
    ]
    if not usable:
        raise RuntimeError(f"no UDP IPv4 host candidate in the browser's SDP:\n{sdp}")
    loop = [c for c in usable if c[4].startswith("127.")]
    keep = {" ".join(c) for c in (loop or usable)}
    out = []
    for line in lines:
        if line.startswith("a=candidate:"):
            if " ".join(line.split()) not in keep:
                continue
            words = line.split()
            words[4] = HOST
            line = " ".join(words)
        elif line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {HOST}"
        out.append(line)
    return "\r\n".join(out)


async def reference(a: Browser, b: Browser, size: int) -> float:
    """One transfer a → b over a plain data channel between two browser processes (MB/s)."""
    try:
        offer = await a.run("pairOffer", timeout=60)
        answer = await b.run("pairAnswer", loopback_only(offer), size, timeout=60)
        await a.run("pairConnect", loopback_only(answer), timeout=60)
        result = await a.run("pairSend", size, timeout=600)
        received = await b.run("pairReceived", timeout=60)
        assert received == size, f"the reference receiver got {received} of {size} bytes"
        return rate(size, result["ms"])
    finally:
        await a.run("pairClose")
        await b.run("pairClose")


def percentile(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))]


@dataclass
class Figures:
    kind: str
    version: str = ""
    ref: float = 0.0
    up: float = 0.0
    down: float = 0.0
    dials: dict[int, list[float]] = field(default_factory=dict)


async def bench_browser(
    kind: str, args: argparse.Namespace, address: str, url: str, size: int
) -> Figures:
    figures = Figures(kind)
    # two separate browser processes; ``main`` also runs everything against keywire
    main, other = await asyncio.gather(Browser.launch(kind, url), Browser.launch(kind, url))
    try:
        figures.version = main.version
        await asyncio.gather(main.goto(url), other.goto(url))
        print(
            f"\n== {kind} {main.version}: {args.size_mb:g} MiB per transfer, best of {args.rounds}",
            flush=True,
        )
        for n in range(args.rounds):
            ref = await reference(main, other, size)
            up_run = await main.run("upload", address, size, 1, timeout=600)
            assert up_run["serverDigest"] == up_run["localDigest"], "upload not byte-exact"
            down_run = await main.run("download", address, size, 2, timeout=600)
            assert down_run["digest"] == hashlib.sha256(pattern(size, 2)).hexdigest()
            up, down = rate(size, up_run["ms"]), rate(size, down_run["ms"])
            print(
                f"  round {n + 1}: reference {ref:6.1f}, up {up:6.1f}, down {down:6.1f} MB/s",
                flush=True,
            )
            figures.ref = max(figures.ref, ref)
            figures.up = max(figures.up, up)
            figures.down = max(figures.down, down)
        print(f"{'browser <-> browser (two processes)':<36}{figures.ref:7.1f} MB/s (reference)")
        print(
            f"{'browser -> keywire (up)':<36}{figures.up:7.1f} MB/s  "
            f"ratio {figures.up / figures.ref:.2f}x"
        )
        print(
            f"{'keywire -> browser (down)':<36}{figures.down:7.1f} MB/s  "
            f"ratio {figures.down / figures.ref:.2f}x"
        )

        # v1 edits the offer, which chromium-nomangle refuses
        wires = (2,) if kind == "chromium-nomangle" else (1, 2)
        figures.dials = {wire: [] for wire in wires}
        left = args.dials
        while left > 0:
            group = min(10, left)
            for wire in wires:
                figures.dials[wire] += await main.run(
                    "dialTimes", address, group, wire, timeout=600
                )
            left -= group
        for wire, times in figures.dials.items():
            print(
                f"dial -> open stream, wire v{wire}, {len(times)} dials: p50 "
                f"{statistics.median(times):.0f} ms, p90 {percentile(times, 0.9):.0f} ms, "
                f"max {max(times):.0f} ms (goal p50 <= 100 ms)"
            )

        started = time.perf_counter()
        many = await main.run("manyAtOnce", address, args.peers, timeout=600)
        print(
            f"{args.peers} connections at once on one port: {many['ok']}/{args.peers} echoed, "
            f"open median {many['median']:.0f} ms, max {many['max']:.0f} ms, all done in "
            f"{(time.perf_counter() - started) * 1000:.0f} ms"
            + (f"; errors: {many['errors']}" if many["errors"] else ""),
            flush=True,
        )
    finally:
        await asyncio.gather(main.close(), other.close())
    return figures


async def python_dialer(certhash: str, port: int, size: int) -> None:
    """The Python WebRTC dialer against the same listener (both ends on this one event loop)."""
    from keywire.kps.webrtc.dialer import dial_webrtc

    times = []
    for _ in range(20):
        started = time.perf_counter()
        conn = await dial_webrtc(HOST, port, certhash)
        times.append((time.perf_counter() - started) * 1000)
        await conn.close()
    conn = await dial_webrtc(HOST, port, certhash)
    data = pattern(size, 1)
    stream = await conn.open_stream()
    started = time.perf_counter()
    await stream.write(f"sink {size}\n".encode())
    await stream.write(data)
    await stream.close_write()
    assert (await stream.read_all()).decode() == hashlib.sha256(data).hexdigest()
    up = rate(size, (time.perf_counter() - started) * 1000)
    stream = await conn.open_stream()
    started = time.perf_counter()
    await stream.write(f"source {size} 2\n".encode())
    await stream.close_write()
    got = await stream.read_all()
    down = rate(size, (time.perf_counter() - started) * 1000)
    assert len(got) == size
    await conn.close()
    print(
        f"\npython dialer (same process as the server): dial p50 "
        f"{statistics.median(times):.0f} ms; up {up:.1f} MB/s, down {down:.1f} MB/s"
    )


def args_dials(f: Figures) -> str:
    return " + ".join(f"{len(t)} v{wire}" for wire, t in f.dials.items()) + " dials"


def summary(all_figures: list[Figures], size_mb: float) -> None:
    print(
        f"\n| {size_mb:g} MiB on one stream | MB/s | × same browser ↔ itself "
        "(two processes) |\n|---|---:|---:|"
    )
    for f in all_figures:
        print(f"| {f.kind} ↔ {f.kind} (reference) | {f.ref:.1f} | 1.00 |")
        print(f"| {f.kind} → keywire (up) | {f.up:.1f} | {f.up / f.ref:.2f} |")
        print(f"| keywire → {f.kind} (down) | {f.down:.1f} | {f.down / f.ref:.2f} |")
    print("\n| dial → open stream | v1 p50 | v2 p50 | v1 p90 | v2 p90 |\n|---|---:|---:|---:|---:|")
    for f in all_figures:
        cells = [
            (f"{statistics.median(t):.0f} ms", f"{percentile(t, 0.9):.0f} ms")
            if (t := f.dials.get(wire))
            else ("—", "—")
            for wire in (1, 2)
        ]
        print(
            f"| {f.kind} ({args_dials(f)}) | {cells[0][0]} | {cells[1][0]} | {cells[0][1]} | "
            f"{cells[1][1]} |"
        )


async def main(args: argparse.Namespace) -> None:
    size = int(args.size_mb * (1 << 20))
    identity = Identity.generate()
    app = CommandApp()

    async def on_connection(conn: Connection) -> None:
        await app.handle(conn)

    listener = KpsListener(identity, KpsSettings(), on_connection)
    await listener.start(HOST, 0)
    assert listener.demux is not None
    options = Options(
        extra={
            "webrtc.max_peers": max(256, args.peers * 2),
            "webrtc.stun_burst": max(100, args.peers * 4),
        }
    )
    webrtc = attach(listener.demux, identity, on_connection, options=options)
    address = f"{HOST}:{listener.port}:{identity.certhash}"
    demo = await serve_demo(
        HOST, 0, "kps:" + address, extra={"/test/scenarios.js": WEB / "test" / "scenarios.js"}
    )
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"listener {address}; load average at start {' '.join(load)}")
    try:
        figures = [
            await bench_browser(kind, args, address, demo.url, size)
            for kind in args.browsers.split(",")
            if kind
        ]
        print(f"\nserver gate counters: {webrtc.gate.counters}")
        if args.python:
            await python_dialer(identity.certhash, listener.port, size)
        summary(figures, args.size_mb)
        with open("/proc/loadavg") as f:
            print(f"\nload average at the end {' '.join(f.read().split()[:3])}")
    finally:
        await demo.close()
        await webrtc.close()
        await app.close()
        await listener.close(abort_connections=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--browsers",
        default="chromium,firefox",
        help="comma-separated driver.mjs kinds (chromium, chromium-nomangle, firefox)",
    )
    parser.add_argument("--size-mb", type=float, default=64.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dials", type=int, default=50)
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument(
        "--quick", action="store_true", help="1 MiB, 1 round, 4 dials, 4 peers: does it run"
    )
    parser.add_argument(
        "--python",
        action="store_true",
        help="also measure the Python WebRTC dialer against the listener",
    )
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.size_mb, parsed.rounds, parsed.dials, parsed.peers = 1.0, 1, 4, 4
    asyncio.run(main(parsed))
