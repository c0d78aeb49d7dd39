"""``~mux`` against what a user would pick instead, measured the same way in the same run.

    .venv/bin/python bench/bench_mux.py [--size-mb 64] [--requests 1000] [--pool 100] [--shs]

A receiver runs in a child process (so each side gets a core) and serves a raw asyncio TCP
listener and a ``MuxConnection`` over TCP (``StreamPipe``, no security layer); a second child,
``bench/yamux_go/yamux_sink.go`` built with Debian's ``golang-go`` and
``golang-github-hashicorp-yamux-dev``, serves the same protocol on hashicorp/yamux. Each
connection or stream speaks:

* ``B`` + u64 size + size bytes → the receiver answers ``ok`` after the last byte (bulk, one way).
* ``R`` + 63 bytes → the receiver answers 64 bytes and FIN (one request/response).
* ``K``, then any number of 64-byte requests, each answered with 64 bytes (keep-alive TCP).

Bulk: one TCP connection vs one mux stream (into keywire's and into hashicorp's receiver).

Request/response, ``--requests`` at once. The reference is a keep-alive pool: ``--pool``
persistent TCP connections (100 is aiohttp's and httpx's default connection limit), opened
before the clock starts just as the mux connection is, each carrying one request at a time;
a request waits for a free connection, as a mux request waits at the 256-stream limit, and its
latency includes that wait. Both sides move the same 64 bytes each way per request, with no
framing beyond what each needs (a mux stream's FIN ends the request; a pooled connection's
requests are fixed-size). A new TCP connection per request is shown for context only.

Receive window (``--delay-ms D``, default 20): the sender delays everything it writes by D ms,
so the link's round trip is D, and sends ``--delay-size-mb`` on one mux stream to three
receivers: hashicorp/yamux with its default 256 KiB MaxStreamWindowSize (plain yamux: at most
one window per round trip), hashicorp/yamux with a fixed 16 MiB window (what its users can
configure, committing 16 MiB per stream), and keywire's auto-tuned window (256 KiB growing to
16 MiB only while the reader keeps up). The sender (keywire's mux with its delayed pipe) and
payload are the same for all three; only the receiver, which sets the window, differs.

With ``--shs`` it also compares ``net~shs`` (one stream, no mux) with ``net~shs~mux``.
The best of ``--rounds`` runs is reported for every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from keywire.errors import StreamError  # noqa: E402
from keywire.mux.connection import MuxConnection  # noqa: E402
from keywire.mux.session import MuxConfig  # noqa: E402
from keywire.pipe import Pipe, StreamPipe  # noqa: E402
from keywire.stream import Connection, Stream  # noqa: E402

BLOCK = os.urandom(1 << 18)
WINDOW_KIB = (
    int(sys.argv[sys.argv.index("--window-kib") + 1]) if "--window-kib" in sys.argv else 256
)
CONFIG = MuxConfig(window=WINDOW_KIB * 1024)
REQUEST = b"R" + os.urandom(63)
GO_SOURCE = Path(__file__).resolve().parent / "yamux_go" / "yamux_sink.go"
GOPATH = Path("/usr/share/gocode")
GO_WINDOWS = (256 << 10, 16 << 20)  # hashicorp's default MaxStreamWindowSize, and a large one


# -- the receiver (child process) ---------------------------------------------------------------
class Reader:
    """The same protocol over an asyncio StreamReader or a keywire Stream."""

    def __init__(
        self,
        read: Callable[[int], Awaitable[bytes]],
        exact: Callable[[int], Awaitable[bytes]],
        write: Callable[[bytes], Awaitable[None]],
        finish: Callable[[], Awaitable[None]],
    ) -> None:
        self.read, self.exact, self.write, self.finish = read, exact, write, finish

    async def serve(self, kind: bytes = b"") -> None:
        kind = kind or await self.exact(1)
        if kind == b"B":
            left = struct.unpack(">Q", await self.exact(8))[0]
            while left > 0:
                chunk = await self.read(1 << 20)
                if not chunk:
                    return
                left -= len(chunk)
            await self.write(b"ok")
        else:
            request = await self.exact(63)
            await self.write(b"A" + request)
        await self.finish()


async def child() -> None:
    async def on_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        async def finish() -> None:
            writer.write_eof()
            await reader.read()
            writer.close()

        try:
            kind = await reader.readexactly(1)
            if kind == b"K":
                await keep_alive(reader, writer)
                return
            await Reader(reader.read, reader.readexactly, write, finish).serve(kind)
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await reader.read(64):
            if len(request) < 64:
                request += await reader.readexactly(64 - len(request))
            writer.write(b"A" + request[1:])
        writer.close()

    async def serve_stream(stream: Stream) -> None:
        try:
            await Reader(stream.read, stream.readexactly, stream.write, stream.close_write).serve()
        except (StreamError, asyncio.IncompleteReadError):
            pass

    async def serve_mux(conn: Connection) -> None:
        tasks = set()
        async for stream in conn:
            task = asyncio.create_task(serve_stream(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def on_mux(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = MuxConnection(StreamPipe(reader, writer), client=False, config=CONFIG)
        await serve_mux(conn)

    raw = await asyncio.start_server(on_raw, "127.0.0.1", 0, backlog=4096)
    mux = await asyncio.start_server(on_mux, "127.0.0.1", 0)
    where: dict[str, int | str] = {
        "raw": raw.sockets[0].getsockname()[1],
        "mux": mux.sockets[0].getsockname()[1],
    }
    if "--shs" in sys.argv:
        import keywire

        for key, spec in (("shs", "net:127.0.0.1:0~shs"), ("shs~mux", "net:127.0.0.1:0~shs~mux")):
            server = keywire.Server([spec], handler=serve_mux)
            await server.start()
            where[key] = server.address()
    print(json.dumps(where), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# -- the sender (this process) ------------------------------------------------------------------
async def bulk_raw(port: int, size: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(b"B" + struct.pack(">Q", size))
    await send_blocks(lambda b: write_drain(writer, b), size)
    assert await reader.readexactly(2) == b"ok"
    elapsed = time.perf_counter() - start
    writer.close()
    return size / elapsed / 1e6


async def write_drain(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def send_blocks(write: Callable[[bytes], Awaitable[None]], size: int) -> None:
    left = size
    while left > 0:
        block = BLOCK if left >= len(BLOCK) else BLOCK[:left]
        await write(block)
        left -= len(block)


async def bulk_stream(conn: Connection, size: int) -> float:
    stream = await conn.open_stream()
    start = time.perf_counter()
    await stream.write(b"B" + struct.pack(">Q", size))
    await send_blocks(stream.write, size)
    assert await stream.readexactly(2) == b"ok"
    elapsed = time.perf_counter() - start
    await stream.close_write()
    return size / elapsed / 1e6


async def mux_connect(port: int, config: MuxConfig = CONFIG, delay: float = 0.0) -> MuxConnection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pipe: Pipe = StreamPipe(reader, writer)
    if delay:
        pipe = DelayedPipe(pipe, writer, delay)
    return MuxConnection(pipe, client=True, config=config)


class DelayedPipe(Pipe):
    """Writes reach the socket ``delay`` seconds late: a long link, for the sender's side."""

    def __init__(self, inner: Pipe, writer: asyncio.StreamWriter, delay: float) -> None:
        self._inner, self._writer, self._delay = inner, writer, delay

    async def read(self, max_bytes: int = 65536) -> bytes:
        return await self._inner.read(max_bytes)

    async def write(self, data: bytes) -> None:
        asyncio.get_running_loop().call_later(self._delay, self._late, data)

    def _late(self, data: bytes) -> None:
        if not self._writer.transport.is_closing():
            self._writer.write(data)

    async def close_write(self) -> None:
        await asyncio.sleep(self._delay)
        await self._inner.close_write()

    def abort(self) -> None:
        self._inner.abort()


async def request_stream(conn: Connection) -> float:
    start = time.perf_counter()
    stream = await conn.open_stream()
    await stream.write(REQUEST)
    await stream.close_write()
    answer = await stream.read_all()
    assert answer == b"A" + REQUEST[1:], answer[:10]
    return time.perf_counter() - start


async def request_raw(port: int) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    writer.write_eof()
    answer = await reader.read()
    assert answer == b"A" + REQUEST[1:]
    writer.close()
    return time.perf_counter() - start


async def open_pool(
    port: int, size: int
) -> asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``size`` keep-alive connections, opened (and announced with ``K``) before timing."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(size):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"K")
        pool.put_nowait((reader, writer))
    return pool


async def request_pooled(
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> float:
    """One request on a free pooled connection; the wait for one counts, as in a real pool."""
    start = time.perf_counter()
    reader, writer = await pool.get()
    try:
        writer.write(REQUEST)
        answer = await reader.readexactly(64)
    finally:
        pool.put_nowait((reader, writer))
    assert answer == b"A" + REQUEST[1:]
    return time.perf_counter() - start


async def close_pool(
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
        await writer.wait_closed()


def start_go_sink() -> tuple[subprocess.Popen[str] | None, dict[int, int], str]:
    """Build and start the hashicorp/yamux receiver; ports by window, or why it is missing."""
    go = shutil.which("go")
    if go is None or not (GOPATH / "src/github.com/hashicorp/yamux").is_dir():
        return None, {}, "needs Debian's golang-go and golang-github-hashicorp-yamux-dev"
    folder = Path(tempfile.gettempdir()) / "keywire-bench-yamux-go"  # reused: go build caches
    folder.mkdir(exist_ok=True)
    binary = folder / "yamux_sink"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": ""}
    env["GOCACHE"] = str(folder / "cache")
    built = subprocess.run(
        [go, "build", "-o", str(binary), str(GO_SOURCE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode != 0:
        return None, {}, f"go build failed: {built.stderr.strip()[-300:]}"
    proc = subprocess.Popen(
        [str(binary), *map(str, GO_WINDOWS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ports = {int(window): port for window, port in json.loads(proc.stdout.readline()).items()}
    return proc, ports, ""


async def many(n: int, one: Callable[[], Awaitable[float]]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    latencies = await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - start), sorted(latencies)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=64, help="bulk transfer size")
    parser.add_argument("--requests", type=int, default=1000, help="concurrent requests")
    parser.add_argument(
        "--pool", type=int, default=100, help="keep-alive TCP connections in the reference pool"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (best counts)")
    parser.add_argument("--shs", action="store_true", help="also net~shs vs net~shs~mux")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=20.0,
        help="round trip of the delayed-link comparison (0 skips it)",
    )
    parser.add_argument("--delay-size-mb", type=int, default=16)
    parser.add_argument(
        "--window-kib",
        type=int,
        default=256,
        help="mux receive window per stream (the --shs chain uses the default)",
    )
    args = parser.parse_args()
    size = args.size_mb << 20

    cmd = [sys.executable, __file__, "--child", "--window-kib", str(args.window_kib)]
    cmd += ["--shs"] if args.shs else []
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    go_proc, go_ports, go_missing = start_go_sink()
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        conn = await mux_connect(ports["mux"])
        raw_rates = [await bulk_raw(ports["raw"], size) for _ in range(args.rounds)]
        mux_rates = [await bulk_stream(conn, size) for _ in range(args.rounds)]
        raw_best, mux_best = max(raw_rates), max(mux_rates)
        print(
            f"bulk, {args.size_mb} MB one way, {args.window_kib} KiB window (best of {args.rounds})"
        )
        print(f"  raw TCP                          {raw_best:8.1f} MB/s   1.000")
        print(
            f"  mux stream, keywire receiver     {mux_best:8.1f} MB/s   {mux_best / raw_best:.3f}"
        )
        if go_ports:
            go_conn = await mux_connect(go_ports[GO_WINDOWS[0]])
            go_best = max([await bulk_stream(go_conn, size) for _ in range(args.rounds)])
            await go_conn.close()
            print(
                f"  mux stream, hashicorp receiver   {go_best:8.1f} MB/s   {go_best / raw_best:.3f}"
            )

        pool = await open_pool(ports["raw"], args.pool)
        pool_rr = [
            await many(args.requests, lambda: request_pooled(pool)) for _ in range(args.rounds)
        ]
        await close_pool(pool)
        mux_rr = [
            await many(args.requests, lambda: request_stream(conn)) for _ in range(args.rounds)
        ]
        raw_rr = [
            await many(args.requests, lambda: request_raw(ports["raw"])) for _ in range(args.rounds)
        ]
        (pool_rate, pool_lat), (mux_rate, mux_lat) = max(pool_rr), max(mux_rr)
        raw_rate, raw_lat = max(raw_rr)
        print(f"request/response, {args.requests} at once (best of {args.rounds})")
        print(f"  {'':37}{'per s':>8} {'p50 ms':>8} {'p99 ms':>8}   ratio")
        rows = (
            (f"keep-alive pool, {args.pool} TCP conns", pool_rate, pool_lat),
            ("mux, a stream each, 1 conn", mux_rate, mux_lat),
            ("(context) a new TCP conn each", raw_rate, raw_lat),
        )
        for label, rate, latencies in rows:
            print(
                f"  {label:36} {rate:8.0f} {pct(latencies, 0.5):8.1f} "
                f"{pct(latencies, 0.99):8.1f}   {rate / pool_rate:.3f}"
            )
        await conn.close()

        if args.delay_ms:
            delay, size_d = args.delay_ms / 1000, args.delay_size_mb << 20
            receivers = [
                (f"hashicorp/yamux, {w >> 10} KiB window", go_ports[w]) for w in sorted(go_ports)
            ]
            receivers.append(("keywire, auto-tuned window", ports["mux"]))
            rates = {}
            for name, port in receivers:
                slow = await mux_connect(port, CONFIG, delay)
                rates[name] = await bulk_stream(slow, size_d)
                await slow.close()
            print(f"bulk, {args.delay_size_mb} MB one way over a {args.delay_ms:g} ms round trip")
            if go_missing:
                print(f"  hashicorp/yamux: not measured ({go_missing})")
            first = next(iter(rates.values()))
            for name, rate in rates.items():
                print(f"  {name:36} {rate:8.1f} MB/s   {rate / first:.3f}")

        if args.shs:
            import keywire

            single = await keywire.dial(ports["shs"])
            shs_rates = [await bulk_stream(single, size)]
            await single.close()
            for _ in range(args.rounds - 1):
                single = await keywire.dial(ports["shs"])
                shs_rates.append(await bulk_stream(single, size))
                await single.close()
            muxed = await keywire.dial(ports["shs~mux"])
            shs_mux_rates = [await bulk_stream(muxed, size) for _ in range(args.rounds)]
            shs_rr_rate = statistics.mean(
                [
                    (await many(args.requests, lambda: request_stream(muxed)))[0]
                    for _ in range(args.rounds)
                ]
            )
            await muxed.close()
            shs_best, shs_mux_best = max(shs_rates), max(shs_mux_rates)
            print(f"net~shs, {args.size_mb} MB one way (best of {args.rounds})")
            print(f"  net~shs              {shs_best:8.1f} MB/s   1.000")
            print(
                f"  net~shs~mux          {shs_mux_best:8.1f} MB/s   {shs_mux_best / shs_best:.3f}"
            )
            print(
                f"  net~shs~mux, {args.requests} requests at once: {shs_rr_rate:.0f} per s "
                f"(mean of {args.rounds})"
            )
    finally:
        for child_proc in (proc, go_proc):
            if child_proc is not None and child_proc.stdin is not None:
                child_proc.stdin.close()
                child_proc.wait(10)


if __name__ == "__main__":
    asyncio.run(child() if "--child" in sys.argv else main())
