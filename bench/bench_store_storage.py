"""Storage a store stream holds while it runs: bounded by the TTL, not by the transfer size.

Streams ``--size`` bytes one way over each backend whose entries expire ``--ttl`` seconds
after their put (the map server also sweeps every 5 s), samples the bytes the store holds
every 0.25 s, then keeps sampling after the transfer until the store is empty. Printed per
backend: throughput, the peak held, peak ÷ transferred, the bound the TTL predicts
(throughput × (TTL + sweep) × frames per value, both directions), and how long after the
end the store was empty.

Usage: .venv/bin/python bench/bench_store_storage.py [--size 67108864] [--ttl 4]
       [--backends http,redis,nats] [--signed]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import redis.asyncio as aioredis

from keywire.store import (
    Geometry,
    HttpStore,
    MapServer,
    RedisStore,
    Role,
    StoreParams,
    StoreStream,
)
from keywire.store.backends import StoreBackend
from keywire.store.backends.nats import NatsStore
from keywire.store.secret import generate_secret

VALUE = 16384
#: how late each store drops what expired (the map server sweeps every min(5, TTL/4) s)
SWEEP = {"http": 0.5, "redis": 0.1, "nats": 1.0}

Probe = Callable[[], Awaitable[int]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


@asynccontextmanager
async def process(args: list[str], port: int) -> AsyncIterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(5)


@asynccontextmanager
async def backend(
    name: str, ttl: float, signed: bool, workdir: Path
) -> AsyncIterator[tuple[StoreBackend, StoreBackend, Probe]]:
    if name == "http":
        server = await MapServer(ttl=ttl, signed=signed).start()
        a, b = HttpStore(server.url, signed=signed), HttpStore(server.url, signed=signed)

        async def held_http() -> int:
            return server.table.stored_bytes

        yield a, b, held_http
        await asyncio.gather(a.close(), b.close())
        await server.close()
    elif name == "redis":
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not found")
        port = free_port()
        args = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
        async with process(args, port):
            url = f"redis://127.0.0.1:{port}/0"
            ra = RedisStore(url, ttl=ttl, signed=signed)
            rb = RedisStore(url, ttl=ttl, signed=signed)
            client = aioredis.Redis.from_url(url)

            async def held_redis() -> int:  # every value has the same length
                return int(await client.dbsize()) * (VALUE + (64 if signed else 0))

            yield ra, rb, held_redis
            await asyncio.gather(ra.close(), rb.close(), client.aclose())
    elif name == "nats":
        if shutil.which("nats-server") is None:
            raise SystemExit("nats-server not found")
        port = free_port()
        args = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(workdir)]
        async with process(args, port):
            url = f"nats://127.0.0.1:{port}/bench"
            na, nb = NatsStore(url, ttl=ttl, signed=signed), NatsStore(url, ttl=ttl, signed=signed)
            await na.probe()

            async def held_nats() -> int:
                return await na.stored_bytes()

            yield na, nb, held_nats
            await asyncio.gather(na.close(), nb.close())
    else:
        raise SystemExit(f"unknown backend {name!r}")


async def run_one(name: str, size: int, ttl: float, signed: bool, workdir: Path) -> None:
    async with backend(name, ttl, signed, workdir) as (a_store, b_store, held):
        params = StoreParams(window=16, value_size=VALUE, rto_min=0.05, rto_initial=0.2)
        secret = generate_secret()
        a = StoreStream.open(a_store, secret, Role.LISTENER, params=params)
        b = StoreStream.open(b_store, secret, Role.DIALER, params=params)
        samples: list[tuple[float, int]] = []
        chunk = bytes(range(256)) * 4096  # 1 MiB

        async def sample() -> None:
            while True:
                samples.append((time.monotonic(), await held()))
                await asyncio.sleep(0.25)

        async def send() -> None:
            for _ in range(size // len(chunk)):
                await a.write(chunk)
            await a.close_write()

        async def receive() -> int:
            total = 0
            while data := await b.read(1 << 20):
                total += len(data)
            await b.close_write()  # both directions end, so both streams finish
            return total

        sampler = asyncio.ensure_future(sample())
        start = time.monotonic()
        _, got = await asyncio.gather(send(), receive())
        elapsed = time.monotonic() - start
        await asyncio.gather(a.wait_finished(), b.wait_finished())
        end = time.monotonic()
        peak = max(v for _, v in samples)
        empty_after: float | None = None
        deadline = end + ttl + SWEEP[name] + 10
        while time.monotonic() < deadline:
            if await held() <= 2 * (VALUE + 64):  # near zero: a frame or two
                empty_after = time.monotonic() - end
                break
            await asyncio.sleep(0.1)
        sampler.cancel()
        await a.abort()
        await b.abort()
        assert got == size // len(chunk) * len(chunk)
        rate = got / elapsed
        # data frames written in TTL + sweep, plus the reader's bare acks (one per
        # window/2 frames): roughly what may be held at once, whatever the size
        frames = rate * (ttl + SWEEP[name]) / Geometry(VALUE).payload_capacity
        bound = frames * (1 + 2 / params.window) * (VALUE + (64 if signed else 0))
        empty = f"{empty_after:.1f} s" if empty_after is not None else "NOT within TTL+10 s"
        print(
            f"{name:6} {'signed' if signed else 'plain':6} {got / 2**20:6.0f} MiB in "
            f"{elapsed:5.1f} s ({rate / 2**20:5.1f} MiB/s)  peak held {peak / 2**20:6.1f} MiB "
            f"({100 * peak / got:4.1f} % of the transfer; TTL bound ≈ {bound / 2**20:5.1f} MiB)  "
            f"held at the end {samples[-1][1] / 2**20:5.1f} MiB; empty {empty} after it "
            f"(ttl {ttl:g} s)",
            flush=True,
        )


async def main(args: argparse.Namespace) -> None:
    for name in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            await run_one(name, args.size, args.ttl, args.signed, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64 << 20)
    parser.add_argument("--ttl", type=float, default=4.0)
    parser.add_argument("--backends", default="http,redis,nats")
    parser.add_argument("--signed", action="store_true", help="write capabilities on")
    asyncio.run(main(parser.parse_args()))
