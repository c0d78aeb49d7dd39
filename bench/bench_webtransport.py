"""WebTransport vs ``kps:`` from Python: one stream of ``--size-mb`` MiB, client → server.

Both listeners run in one child process (``--serve``) with the same identity and the same
``kps.*`` settings; the client alternates ``kps:`` and ``webtransport:`` dials ``--runs`` times
and reports each transport's median throughput and the ratio webtransport / kps (issue 13's
goal: ≥ 0.8). A run is timed from the first byte written to the server's answer (the byte
count, sent after it read FIN), so it measures delivery, not queueing.

    .venv/bin/python bench/bench_webtransport.py --size-mb 64 --runs 3

``--browser chromium`` (or ``firefox``; repeatable) adds the browser figures: one listener
process-local (KPS with WebRTC on one port, WebTransport on another, one identity), the page's
``dial()`` (web/test/scenarios.js ``upload``/``download``) given the ``kps:`` address (WebRTC)
or a multiaddress offering ``webtransport:`` (WebTransport), ``--size-mb`` each way, alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

import keywire
from keywire.address import format_alternative
from keywire.identity import Identity
from keywire.options import Options
from keywire.stream import Connection, Stream

CHUNK = 256 << 10


async def _sink(conn: Connection) -> None:
    async def one(stream: Stream) -> None:
        with contextlib.suppress(Exception):
            total = 0
            while chunk := await stream.read():
                total += len(chunk)
            await stream.write(str(total).encode())
            await stream.close_write()

    tasks: set[asyncio.Task[None]] = set()
    async for stream in conn:
        task = asyncio.ensure_future(one(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def serve() -> None:
    """Child: both listeners, addresses on stdout, until stdin closes."""
    options = Options(identity=Identity.generate())
    specs = ["kps:127.0.0.1:0", "webtransport:127.0.0.1:0"]
    async with keywire.Server(specs, options, handler=_sink) as server:
        for alt in server.addresses().alternatives:
            print(format_alternative(alt), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def one_run(address: str, size: int) -> float:
    """Seconds to move ``size`` bytes on one fresh connection's stream."""
    conn = await keywire.dial(address)
    try:
        stream = await conn.open_stream()
        block = bytes(CHUNK)
        start = time.perf_counter()
        sent = 0
        while sent < size:
            await stream.write(block[: min(CHUNK, size - sent)])
            sent += min(CHUNK, size - sent)
        await stream.close_write()
        answer = await stream.read_all()
        elapsed = time.perf_counter() - start
        if int(answer) != size:
            raise RuntimeError(f"{address.split(':')[0]}: server counted {answer!r}, sent {size}")
        return elapsed
    finally:
        await conn.close()


async def bench_browser(kind: str, size: int, runs: int) -> None:
    """Browser → server and server → browser, WebRTC vs WebTransport, same listeners."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tests" / "webrtc"))
    from wrtc_browser import WEB, Browser, CommandApp  # type: ignore[import-not-found]

    from keywire.kps.quic.listener import KpsListener
    from keywire.kps.settings import KpsSettings
    from keywire.kps.webrtc.demo import serve_demo
    from keywire.kps.webrtc.server import attach
    from keywire.webtransport.handler import WebTransportListening
    from keywire.webtransport.listener import WebTransportListener

    identity = Identity.generate()
    app = CommandApp()
    kps = KpsListener(identity, KpsSettings(), app.handle)
    await kps.start("127.0.0.1", 0)
    assert kps.demux is not None
    webrtc = attach(kps.demux, identity, app.handle)
    wt = WebTransportListener(identity, KpsSettings(), app.handle)
    await wt.start("127.0.0.1", 0)
    wt_alt = WebTransportListening(wt, "127.0.0.1").announce(keywire.address.Scope.DEVICE)[0]
    kps_address = f"kps:127.0.0.1:{kps.port}:{identity.certhash}"
    addresses = {"webrtc": kps_address, "webtransport": format_alternative(wt_alt)}
    extra = {
        "/test/scenarios.js": WEB / "test" / "scenarios.js",
        "/webtransport.js": root / "src" / "keywire" / "web" / "webtransport.js",
    }
    demo = await serve_demo("127.0.0.1", 0, kps_address, extra=extra)
    browser = await Browser.launch(kind, demo.url)
    try:
        await browser.goto(demo.url)
        figures: dict[tuple[str, str], list[float]] = {}
        for _ in range(runs):
            for name, address in addresses.items():
                up = await browser.run("upload", address, size, timeout=600)
                if up["serverDigest"] != up["localDigest"]:
                    raise RuntimeError(f"{kind} {name} upload: digests differ")
                down = await browser.run("download", address, size, timeout=600)
                if down["length"] != size:
                    raise RuntimeError(f"{kind} {name} download: {down['length']} of {size}")
                figures.setdefault((name, "up"), []).append(size / up["ms"] / 1e3)
                figures.setdefault((name, "down"), []).append(size / down["ms"] / 1e3)
        print(f"{kind} {browser.version}:")
        for direction in ("up", "down"):
            med = {n: statistics.median(figures[(n, direction)]) for n in addresses}
            arrow = "browser → server" if direction == "up" else "server → browser"
            print(
                f"  {arrow}: webrtc {med['webrtc']:.1f} MB/s, webtransport "
                f"{med['webtransport']:.1f} MB/s, ratio {med['webtransport'] / med['webrtc']:.2f}"
            )
    finally:
        await browser.close()
        await demo.close()
        await webrtc.close()
        await wt.close(abort_connections=True)
        await kps.close(abort_connections=True)
        await app.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--browser", action="append", default=[], help="chromium or firefox")
    parser.add_argument("--no-python", action="store_true", help="browser figures only")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        await serve()
        return
    if not args.no_python:
        await bench_python(args.size_mb << 20, args.runs)
    for kind in args.browser:
        await bench_browser(kind, args.size_mb << 20, args.runs)


async def bench_python(size: int, runs: int) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--serve",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    try:
        addresses: dict[str, str] = {}
        while len(addresses) < 2:
            line = (await asyncio.wait_for(child.stdout.readline(), 30)).decode().strip()
            if not line:
                raise RuntimeError("the server child ended without announcing")
            addresses[line.split(":", 1)[0]] = line
        times: dict[str, list[float]] = {"kps": [], "webtransport": []}
        for _ in range(runs):
            for name in times:
                times[name].append(await asyncio.wait_for(one_run(addresses[name], size), 300))
        rates = {name: size / statistics.median(t) / 1e6 for name, t in times.items()}
        for name, rate in rates.items():
            each = ", ".join(f"{size / t / 1e6:.0f}" for t in times[name])
            print(f"{name:13s} {rate:7.1f} MB/s median of {len(times[name])} ({each})")
        print(f"ratio webtransport / kps: {rates['webtransport'] / rates['kps']:.2f}")
    finally:
        child.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wait(), 10)
        if child.returncode is None:
            child.kill()
            await child.wait()


if __name__ == "__main__":
    asyncio.run(main())
