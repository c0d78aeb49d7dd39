"""Store-stream throughput and per-frame latency over memory, the map server and Redis.

For each backend, loss rate and window it streams ``--size`` bytes one way and times the
transfer, then times ``--pings`` small ping-pongs. The reference, measured in the same run on
the same backend, is the raw store: one put followed by one get of a full-size value (what
one frame costs with no protocol and no pipelining). Printed ratios:

* ``thr/raw``  = stream throughput ÷ (value size ÷ raw put+get time): above 1 means
  pipelining beats a one-at-a-time store client;
* ``lat/raw``  = one-way latency of a small write ÷ raw put+get time.

Usage: .venv/bin/python bench/bench_store.py [--size 1000000] [--windows 1,8,32]
       [--losses 0,0.1] [--backends memory,http,https,redis,rediss] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from keywire.store import (
    HttpStore,
    LossyStore,
    MapServer,
    MemoryStore,
    RedisStore,
    Role,
    StoreBackend,
    StoreParams,
    StoreStream,
    generate_secret,
)
from keywire.store.tls import server_context
from selfsigned import write_self_signed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def client_pair(
    make: Callable[[], StoreBackend],
) -> AsyncIterator[tuple[StoreBackend, StoreBackend]]:
    """Two clients of one store (each end of a stream has its own connection)."""
    a, b = make(), make()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@asynccontextmanager
async def redis_server(tls: tuple[Path, Path] | None) -> AsyncIterator[str]:
    """A throwaway redis-server on a free port (TLS-only with ``tls``); yields its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found: install it or pass --redis-url")
    folder = tempfile.mkdtemp()
    port = free_port()
    listen = ["--port", str(port)]
    if tls is not None:
        cert, key = tls
        listen = [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
        ]
    proc = subprocess.Popen(
        [
            "redis-server",
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            folder,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield f"{'rediss' if tls else 'redis'}://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def backend_pair(
    name: str, args: argparse.Namespace
) -> AsyncIterator[tuple[StoreBackend, StoreBackend]]:
    """Two clients of one store of kind ``name``: memory, http, https, redis or rediss."""
    big = 1 << 20
    if name == "memory":
        store = MemoryStore()
        yield store, store
        return
    with tempfile.TemporaryDirectory() as folder:
        cert, key = write_self_signed(Path(folder))
        if name in ("http", "https"):
            tls = server_context(str(cert), str(key)) if name == "https" else None
            async with (
                MapServer(max_value=big, tls=tls) as server,
                client_pair(lambda: HttpStore(server.url, max_value=big, cafile=str(cert))) as pair,
            ):
                yield pair
            return
        if name not in ("redis", "rediss"):
            raise SystemExit(f"unknown backend {name!r}: memory, http, https, redis, rediss")
        async with contextlib.AsyncExitStack() as stack:
            url = args.redis_url if name == "redis" else None
            if url is None:
                url = await stack.enter_async_context(
                    redis_server((cert, key) if name == "rediss" else None)
                )
            async with client_pair(
                lambda: RedisStore(url, max_value=big, cafile=str(cert))
            ) as pair:
                yield pair


async def raw_roundtrip(store: StoreBackend, value_size: int, rounds: int) -> float:
    """Median seconds of one put followed by one get of a full value."""
    value = os.urandom(value_size)
    times = []
    for i in range(rounds):
        address = i.to_bytes(4, "big") + os.urandom(28)
        start = time.perf_counter()
        await store.put(address, value)
        assert await store.get(address, 1.0) == value
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def one_run(
    a_store: StoreBackend, b_store: StoreBackend, params: StoreParams, size: int, pings: int
) -> tuple[float, float, int]:
    """(throughput bytes/s, median one-way latency s, puts of the sender) for one setting."""
    secret = generate_secret()
    a = StoreStream.open(a_store, secret, Role.LISTENER, params=params)
    b = StoreStream.open(b_store, secret, Role.DIALER, params=params)
    try:
        # latency first, on an idle stream: a small write until the peer reads it, and back
        rtts = []
        for _ in range(pings):
            start = time.perf_counter()
            await a.write(b"p" * 64)
            await b.readexactly(64)
            await b.write(b"q" * 64)
            await a.readexactly(64)
            rtts.append(time.perf_counter() - start)
        data = os.urandom(size)
        start = time.perf_counter()

        async def send() -> None:
            await a.write(data)
            await a.close_write()

        _, got = await asyncio.gather(send(), b.read_all())
        elapsed = time.perf_counter() - start
        assert got == data
        return size / elapsed, statistics.median(rtts) / 2, a.core.sender.write_idx
    finally:
        await a.abort()
        await b.abort()


async def main(args: argparse.Namespace) -> None:
    windows = [int(w) for w in args.windows.split(",")]
    losses = [float(x) for x in args.losses.split(",")]
    print(
        f"store-stream benchmark: {args.size} bytes one way, value size {args.value_size}, "
        f"{args.pings} ping-pongs, rto_min {args.rto_min} s"
    )
    header = (
        f"{'backend':8} {'loss':>5} {'window':>6} {'MB/s':>8} {'thr/raw':>8} "
        f"{'lat ms':>8} {'lat/raw':>8} {'raw ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for name in args.backends.split(","):
        async with backend_pair(name, args) as (store_a, store_b):
            raw = await raw_roundtrip(store_a, args.value_size, 30)
            raw_rate = args.value_size / raw
            for loss in losses:
                for window in windows:
                    params = StoreParams(
                        window=window,
                        value_size=args.value_size,
                        rto_min=args.rto_min,
                        rto_initial=max(args.rto_min, 0.2),
                        seed=1,
                    )
                    a = LossyStore(store_a, put_loss=loss, seed=window) if loss else store_a
                    b = LossyStore(store_b, put_loss=loss, seed=window + 1) if loss else store_b
                    rate, latency, _ = await one_run(a, b, params, args.size, args.pings)
                    print(
                        f"{name:8} {loss:5.0%} {window:6d} {rate / 1e6:8.2f} "
                        f"{rate / raw_rate:8.2f} {latency * 1e3:8.2f} {latency / raw:8.2f} "
                        f"{raw * 1e3:7.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="bytes per transfer")
    parser.add_argument("--value-size", type=int, default=16384, help="store value size")
    parser.add_argument("--windows", default="1,8,32")
    parser.add_argument("--losses", default="0,0.1")
    parser.add_argument(
        "--backends",
        default="memory,http,https,redis,rediss",
        help="comma list of: memory, http, https, redis, rediss",
    )
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument(
        "--rto-min",
        type=float,
        default=0.05,
        help="minimum retransmission timeout (the library default is 0.2)",
    )
    parser.add_argument(
        "--redis-url", default=None, help="use this Redis instead of starting a redis-server"
    )
    asyncio.run(main(parser.parse_args()))
