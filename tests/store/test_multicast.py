"""Multicast: one writer, any number of readers, no acks; lost puts are put again."""

from __future__ import annotations

import asyncio

import pytest

from keywire.errors import Code, StreamError
from keywire.store import (
    LossyStore,
    MemoryStore,
    Mode,
    RedisStore,
    Role,
    StoreBackend,
    StoreParams,
    StoreStream,
)

from .conftest import RedisProcess, random_bytes

SECRET = bytes(range(50, 82))
PARAMS = StoreParams(window=8, rto_min=0.05, rto_initial=0.2)


async def publish_to_readers(store: StoreBackend, reader_store: StoreBackend) -> None:
    data = random_bytes(1_000_000, 3)
    publisher = StoreStream.open(store, SECRET, Role.LISTENER, params=PARAMS, mode=Mode.MULTICAST)
    readers = [
        StoreStream.open(reader_store, SECRET, Role.DIALER, params=PARAMS, mode=Mode.MULTICAST)
        for _ in range(3)
    ]
    late: StoreStream | None = None
    try:
        async with asyncio.timeout(30):
            await publisher.write(data)
            await publisher.close_write()
            results = await asyncio.gather(*(r.read_all() for r in readers))
            await publisher.sync(acked=True)  # every frame read back from the store
            await publisher.wait_finished()
            # a reader that joins after the publisher finished still reads from the start
            late = StoreStream.open(
                reader_store, SECRET, Role.DIALER, params=PARAMS, mode=Mode.MULTICAST
            )
            results.append(await late.read_all())
        assert all(result == data for result in results)
        assert await publisher.read() == b""  # nothing flows back to a publisher
        with pytest.raises(StreamError) as info:
            await readers[0].write(b"no")
        assert info.value.code == Code.UNSUPPORTED
    finally:
        for stream in (publisher, *readers, *([late] if late else [])):
            await stream.abort()


async def test_multicast_to_three_readers_and_a_late_one_with_loss() -> None:
    memory = MemoryStore()
    lossy = LossyStore(memory, put_loss=0.3, duplicate=0.1, delay=(0, 0.003), seed=5)
    await publish_to_readers(lossy, memory)
    assert lossy.dropped > 5  # and still nothing was missing
    await lossy.close()


async def test_multicast_over_redis(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url)
    readers = RedisStore(redis_server.url)
    try:
        await publish_to_readers(LossyStore(store, put_loss=0.2, seed=6), readers)
    finally:
        await store.close()
        await readers.close()
