"""KPS WebRTC-direct from real Chromium: throughput, dial latency and many peers on one port.

    .venv/bin/python bench/bench_webrtc.py [--size-mb 16] [--dials 50] [--peers 50] [--rounds 1]
                                           [--python]

One keywire KPS listener (QUIC + WebRTC on one UDP port, this process) and one headless
Chromium (Debian's, through web/test/driver.mjs):

* up / down: ``--size-mb`` on one stream, browser → server and server → browser, each as a ratio
  to a Chromium ↔ Chromium data channel in the same page moving the same amount in the same
  16 KiB messages with the same 1 MiB buffering (the practical ceiling on this machine);
* dial: ``--dials`` dials one after another, time from ``dial()`` to an open stream (p50, p90);
* peers: ``--peers`` connections dialed at once from the page to the one port, each echoing.

The best of ``--rounds`` is reported for throughput. Sizes are MB = 10^6 bytes in the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "webrtc"))

from wrtc_browser import WEB, Browser, CommandApp, pattern  # noqa: E402

from keywire.identity import Identity  # noqa: E402
from keywire.kps.listener import KpsListener  # noqa: E402
from keywire.kps.settings import KpsSettings  # noqa: E402
from keywire.stream import Connection  # noqa: E402
from keywire.webrtc.demo import serve_demo  # noqa: E402
from keywire.webrtc.server import attach  # noqa: E402


def rate(size: int, ms: float) -> float:
    return size / (ms / 1000) / 1e6


async def python_dialer(address: str, certhash: str, size: int) -> None:
    """The Python WebRTC dialer against the same listener (both ends on this one event loop)."""
    from keywire.webrtc.dialer import dial_webrtc

    host, port = address.split(":")[0], int(address.split(":")[1])
    times = []
    for _ in range(20):
        started = time.perf_counter()
        conn = await dial_webrtc(host, port, certhash)
        times.append((time.perf_counter() - started) * 1000)
        await conn.close()
    conn = await dial_webrtc(host, port, certhash)
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
    print(f"python dialer (same process as the server): dial p50 "
          f"{statistics.median(times):.0f} ms; up {up:.1f} MB/s, down {down:.1f} MB/s")


async def main(args: argparse.Namespace) -> None:
    size = int(args.size_mb * (1 << 20))
    identity = Identity.generate()
    app = CommandApp()

    async def on_connection(conn: Connection) -> None:
        await app.handle(conn)

    listener = KpsListener(identity, KpsSettings(), on_connection)
    await listener.start("127.0.0.1", 0)
    assert listener.demux is not None
    from keywire.chain import Options

    options = Options(extra={"webrtc.max_peers": max(256, args.peers * 2),
                             "webrtc.stun_burst": max(100, args.peers * 4)})
    webrtc = attach(listener.demux, identity, on_connection, options=options)
    address = f"127.0.0.1:{listener.port}:{identity.certhash}"
    demo = await serve_demo("127.0.0.1", 0, "kps:" + address,
                            extra={"/test/scenarios.js": WEB / "test" / "scenarios.js"})
    browser = await Browser.launch()
    try:
        await browser.goto(demo.url)
        print(f"listener {address}; {args.size_mb:g} MiB per transfer, best of {args.rounds}")
        up = down = ref = 0.0
        for _ in range(args.rounds):
            result = await browser.run("chromiumPair", size, timeout=600)
            ref = max(ref, rate(size, result["ms"]))
            result = await browser.run("upload", address, size, 1, timeout=600)
            assert result["serverDigest"] == result["localDigest"], "upload not byte-exact"
            up = max(up, rate(size, result["ms"]))
            result = await browser.run("download", address, size, 2, timeout=600)
            assert result["digest"] == hashlib.sha256(pattern(size, 2)).hexdigest()
            down = max(down, rate(size, result["ms"]))
        print(f"chromium<->chromium data channel   {ref:7.1f} MB/s (reference)")
        print(f"browser -> keywire (up)            {up:7.1f} MB/s  ratio {up / ref:.2f}x")
        print(f"keywire -> browser (down)          {down:7.1f} MB/s  ratio {down / ref:.2f}x")

        times = await browser.run("dialTimes", address, args.dials, timeout=600)
        times.sort()
        p50 = statistics.median(times)
        p90 = times[int(len(times) * 0.9) - 1] if len(times) >= 10 else times[-1]
        print(f"dial -> open stream over {len(times)} dials: p50 {p50:.0f} ms, p90 {p90:.0f} ms, "
              f"max {times[-1]:.0f} ms (goal p50 <= 150 ms)")

        started = time.perf_counter()
        many = await browser.run("manyAtOnce", address, args.peers, timeout=600)
        print(f"{args.peers} connections at once on one port: {many['ok']}/{args.peers} echoed, "
              f"open median {many['median']:.0f} ms, max {many['max']:.0f} ms, all done in "
              f"{(time.perf_counter() - started) * 1000:.0f} ms"
              + (f"; errors: {many['errors']}" if many["errors"] else ""))
        print(f"server gate counters: {webrtc.gate.counters}")
        if args.python:
            await python_dialer(address, identity.certhash, size)
    finally:
        await browser.close()
        await demo.close()
        await webrtc.close()
        await app.close()
        await listener.close(abort_connections=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=16.0)
    parser.add_argument("--dials", type=int, default=50)
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--python", action="store_true",
                        help="also measure the Python WebRTC dialer against the listener")
    asyncio.run(main(parser.parse_args()))
