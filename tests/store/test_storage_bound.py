"""Storage a finished 64 MiB transfer leaves behind returns to near zero within the TTL.

Why: frames carry a TTL in every backend, and nothing deletes them but expiry, so a store that
forgot the TTL (or a sweep that never runs) would keep every frame of every stream for ever.
Each test streams 64 MiB one way over a real store with a TTL of a few seconds, checks the
bytes arrive exactly, and samples what the store holds until it is (almost) empty.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from keywire.store import HttpStore, MapServer, RedisStore, Role, StoreParams, StoreStream
from keywire.store.backends import StoreBackend
from keywire.store.capability import SIGNATURE_SIZE
from keywire.store.secret import generate_secret

from .conftest import RedisProcess, random_bytes

SIZE = 64 << 20
VALUE = 16384
TTL = 2.0
#: "near zero": a frame or two (the last bare ack may be put after the reader finished)
NEAR_ZERO_VALUES = 2
#: time allowed beyond TTL + the store's own expiry delay (scheduling on a loaded machine)
SLACK = 2.0
PARAMS = StoreParams(window=16, value_size=VALUE, rto_min=0.05, rto_initial=0.2)

Probe = Callable[[], Awaitable[int]]


async def transfer_then_drain(
    a_store: StoreBackend, b_store: StoreBackend, held: Probe, expiry_delay: float
) -> tuple[float, float, int]:
    """Stream SIZE bytes a → b; (transfer seconds, seconds from the end until ``held()`` is
    near zero, peak held). Fails the test on a byte mismatch or if it never drains."""
    data = random_bytes(SIZE, 64)
    secret = generate_secret()
    a = StoreStream.open(a_store, secret, Role.LISTENER, params=PARAMS)
    b = StoreStream.open(b_store, secret, Role.DIALER, params=PARAMS)
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await held())
            await asyncio.sleep(0.2)

    async def send() -> None:
        await a.write(data)
        await a.close_write()

    async def receive() -> bytes:
        got = await b.read_all()
        await b.close_write()  # both directions end, so both streams finish
        return got

    sampler = asyncio.ensure_future(sample())
    try:
        start = time.monotonic()
        _, got = await asyncio.gather(send(), receive())
        elapsed = time.monotonic() - start
        assert got == data, "the 64 MiB did not arrive byte-exact"
        await asyncio.gather(a.wait_finished(), b.wait_finished())
        end = time.monotonic()
        limit = end + TTL + expiry_delay + SLACK
        near_zero = NEAR_ZERO_VALUES * (VALUE + SIGNATURE_SIZE)
        while (now_held := await held()) > near_zero:
            assert time.monotonic() < limit, (
                f"the store still holds {now_held} bytes {time.monotonic() - end:.1f} s after "
                f"the transfer (TTL {TTL:g} s)"
            )
            await asyncio.sleep(0.05)
        return elapsed, time.monotonic() - end, peak
    finally:
        sampler.cancel()
        await a.abort()
        await b.abort()


async def test_map_server_storage_returns_to_zero() -> None:
    server = MapServer(ttl=TTL, max_value=1 << 16, max_bytes=512 << 20)
    await server.start()
    a, b = HttpStore(server.url), HttpStore(server.url)

    async def held() -> int:
        return server.table.stored_bytes

    try:
        async with asyncio.timeout(60):
            # the map server sweeps every TTL/4 (at least 0.25 s)
            elapsed, drained, peak = await transfer_then_drain(a, b, held, TTL / 4)
        print(
            f"map server: 64 MiB in {elapsed:.1f} s, peak {peak >> 20} MiB, "
            f"empty {drained:.1f} s after"
        )
        assert peak > 0  # the probe saw the frames (it measures what the stream stores)
    finally:
        await asyncio.gather(a.close(), b.close())
        await server.close()


async def test_redis_storage_returns_to_zero(redis_server: RedisProcess) -> None:
    a = RedisStore(redis_server.url, ttl=TTL)
    b = RedisStore(redis_server.url, ttl=TTL)
    client = aioredis.Redis.from_url(redis_server.url)

    async def held() -> int:  # every stored value is one frame of the same length
        return int(await client.dbsize()) * VALUE

    try:
        async with asyncio.timeout(60):
            # Redis expires keys lazily and by sampling, about ten times a second
            elapsed, drained, peak = await transfer_then_drain(a, b, held, 0.5)
        print(f"redis: 64 MiB in {elapsed:.1f} s, peak {peak >> 20} MiB, empty {drained:.1f} s on")
        assert peak > 0
    finally:
        await asyncio.gather(a.close(), b.close(), client.aclose())
