"""StoreStream over the in-memory store: bulk transfers, the Stream contract, save/restore."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

import pytest

from keywire.corestream import CoreStream
from keywire.errors import Code, StreamError, UnsupportedError
from keywire.shell import OneStreamConnection
from keywire.store import (
    LossyStore,
    MemoryStore,
    Role,
    StateError,
    StoreParams,
    StoreStream,
    new_state_key,
)

from .conftest import random_bytes

SECRET = bytes(range(100, 132))
FAST = dict(rto_min=0.05, rto_initial=0.2)
MB8 = 8 * 1024 * 1024


async def send_all(stream: StoreStream, data: bytes, chunk: int = 1 << 20) -> None:
    for i in range(0, len(data), chunk):
        await stream.write(data[i : i + chunk])
    await stream.close_write()


async def exchange(
    store_a: object, store_b: object, params: StoreParams, size: int, seconds: float
) -> None:
    a = StoreStream.open(store_a, SECRET, Role.LISTENER, params=params)  # type: ignore[arg-type]
    b = StoreStream.open(store_b, SECRET, Role.DIALER, params=params)  # type: ignore[arg-type]
    up, down = random_bytes(size, 1), random_bytes(size, 2)
    try:
        async with asyncio.timeout(seconds):
            _, _, got_b, got_a = await watched(
                (a, b),
                asyncio.gather(send_all(a, up), send_all(b, down), b.read_all(), a.read_all()),
                stall=min(60.0, seconds / 2),
            )
            assert got_b == up and got_a == down
            await asyncio.gather(a.wait_finished(), b.wait_finished())
        assert not a.rejections and not b.rejections
    finally:
        await a.abort()
        await b.abort()


async def watched[T](streams: tuple[StoreStream, ...], work: Awaitable[T], stall: float) -> T:
    """``work``'s result; fails with each stream's state (``StoreCore.describe``) and its
    latest store troubles when no stream reads or confirms anything for ``stall`` seconds, so
    a stall says where it stands instead of only timing out."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()

    def progress() -> tuple[int, ...]:
        return tuple(x for s in streams for x in (s.bytes_read, s.core.sender.peer_ack))

    last, since = progress(), loop.time()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return task.result()
            now = loop.time()
            if (seen := progress()) != last:
                last, since = seen, now
            elif now - since >= stall:
                report = "\n".join(
                    f"stream {i}: {s.core.describe(now)}\n  troubles: {list(s.troubles)[-3:]}"
                    for i, s in enumerate(streams)
                )
                raise AssertionError(f"no progress for {stall:g} s:\n{report}")
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def test_8mb_each_way_in_memory() -> None:
    store = MemoryStore()
    await exchange(store, store, StoreParams(window=16, **FAST), MB8, 25)


async def test_8mb_each_way_with_30_percent_loss_reordering_duplication() -> None:
    memory = MemoryStore()
    lossy_a = LossyStore(memory, put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=11)
    lossy_b = LossyStore(memory, put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=12)
    await exchange(lossy_a, lossy_b, StoreParams(window=16, value_size=65536, **FAST), MB8, 25)
    assert lossy_a.dropped > 20 and lossy_b.dropped > 20 and lossy_a.duplicated > 5
    await lossy_a.close()
    await lossy_b.close()


async def test_read_eof_only_after_fin_and_write_after_close_fails() -> None:
    store = MemoryStore()
    a = StoreStream.open(store, SECRET, Role.LISTENER, params=StoreParams(**FAST))
    b = StoreStream.open(store, SECRET, Role.DIALER, params=StoreParams(**FAST))
    try:
        await a.write(b"hello")
        await a.sync()
        assert await asyncio.wait_for(b.read(), 5) == b"hello"
        read = asyncio.ensure_future(b.read())
        await asyncio.sleep(0.1)
        assert not read.done()  # no FIN yet: the read waits
        await a.close_write()
        assert await asyncio.wait_for(read, 5) == b""
        with pytest.raises(StreamError) as info:
            await a.write(b"more")
        assert info.value.code == Code.CLOSED
        await b.write(b"reply")  # half-close: b can still write
        await b.close_write()
        assert await asyncio.wait_for(a.read_all(), 5) == b"reply"
        await asyncio.wait_for(b.sync(acked=True), 5)
        await asyncio.wait_for(asyncio.gather(a.wait_finished(), b.wait_finished()), 5)
    finally:
        await a.abort()
        await b.abort()


async def test_reset_fails_the_peer_with_the_code() -> None:
    store = MemoryStore()
    a = StoreStream.open(store, SECRET, Role.LISTENER, params=StoreParams(**FAST))
    b = StoreStream.open(store, SECRET, Role.DIALER, params=StoreParams(**FAST))
    try:
        await a.write(b"x" * 1000)
        a.reset(77)
        with pytest.raises(StreamError) as info:
            async with asyncio.timeout(5):
                await b.read_all()
        assert info.value.wire_code == 77 and info.value.remote
        with pytest.raises(StreamError):
            await a.write(b"after reset")
    finally:
        await a.abort()
        await b.abort()


async def test_connection_has_exactly_one_stream() -> None:
    store = MemoryStore()
    a = StoreStream.open(store, SECRET, Role.LISTENER).connection.named("mem~stream")
    b = StoreStream.open(store, SECRET, Role.DIALER).connection.named("mem~stream")
    sa = await a.accept_stream()
    sb = await b.open_stream()
    with pytest.raises(UnsupportedError):
        await b.open_stream()
    await sb.write(b"ping")
    await sb.close_write()
    assert await asyncio.wait_for(sa.read_all(), 5) == b"ping"
    await sa.close_write()
    await asyncio.wait_for(asyncio.gather(a.close(), b.close()), 10)
    assert a.closed and b.closed


async def test_a_store_stream_runs_on_the_shared_shell() -> None:
    """One stream object, born with its connection: ``stream.connection.named`` names that
    connection (the shell's ``OneStreamConnection``); the stream ends the connection once both
    directions are done, as every single-stream transport does."""
    store = MemoryStore()
    stream = StoreStream.open(store, SECRET, Role.DIALER, params=StoreParams(**FAST))
    peer = StoreStream.open(store, SECRET, Role.LISTENER, params=StoreParams(**FAST))
    conn = stream.connection.named("mem~stream", linger=3.0)
    try:
        assert conn is stream.connection and isinstance(conn, OneStreamConnection)
        assert isinstance(stream, CoreStream) and conn.close_timeout == 3.0
        assert await conn.open_stream() is stream
        with pytest.raises(UnsupportedError, match="mem~stream carries one stream"):
            await conn.open_stream()
        await stream.write(b"hello")
        await stream.close_write()
        async with asyncio.timeout(5):
            assert await peer.read_all() == b"hello"
            await peer.close_write()
            assert await stream.read_all() == b""
            ending = await conn.wait_closed()
        assert ending.code == Code.NONE and "store stream ended" in str(ending)
        assert stream.finished and peer.finished
        with pytest.raises(StreamError):
            await stream.write(b"late")
    finally:
        await conn.abort()
        await peer.abort()


async def test_write_waits_for_credit() -> None:
    """A peer that does not read stops the writer: the buffers are bounded."""
    store = MemoryStore()
    params = StoreParams(window=2, value_size=1024, max_read_buffer=4096, **FAST)
    a = StoreStream.open(store, SECRET, Role.LISTENER, params=params)
    b = StoreStream.open(store, SECRET, Role.DIALER, params=params)
    try:
        writer = asyncio.ensure_future(a.write(b"z" * 200_000))
        await asyncio.sleep(0.5)
        assert not writer.done()
        assert len(store) < 40  # not 200 frames in the store
        got = bytearray()
        async with asyncio.timeout(10):
            while len(got) < 200_000:
                got += await b.read()
            await writer
        assert bytes(got) == b"z" * 200_000
    finally:
        await a.abort()
        await b.abort()


async def test_save_and_restore_lose_nothing() -> None:
    """The writer is dropped mid-transfer (as by a crash) and resumed from its saved state,
    taken at an arbitrary moment: the reader gets every byte once, in order."""
    memory = MemoryStore()
    store = LossyStore(memory, put_loss=0.2, seed=3)
    key = new_state_key()
    data = random_bytes(3_000_000, 9)
    params = StoreParams(window=8, **FAST)
    writer = StoreStream.open(store, SECRET, Role.DIALER, params=params)
    reader = StoreStream.open(memory, SECRET, Role.LISTENER, params=params)
    received = bytearray()

    async def read() -> None:
        while chunk := await reader.read():
            received.extend(chunk)

    reading = asyncio.ensure_future(read())
    try:
        blob = b""
        for i in range(0, 2_000_000, 100_000):
            await writer.write(data[i : i + 100_000])
            if i == 1_000_000:
                blob = writer.save(key)  # taken mid-transfer
        await asyncio.sleep(0.2)
        await writer.abort()  # "crash": everything after the save is lost
        with pytest.raises(StateError):
            await StoreStream.restore(store, blob, new_state_key())
        resumed = await StoreStream.restore(store, blob, key, params=params)
        offset = resumed.bytes_written
        assert 1_000_000 <= offset <= 2_000_000
        await send_all(resumed, data[offset:])
        async with asyncio.timeout(20):
            await reading
            await resumed.sync(acked=True)
        assert bytes(received) == data
        await resumed.abort()
    finally:
        reading.cancel()
        await reader.abort()
        await store.close()


async def test_value_size_must_fit_the_store() -> None:
    with pytest.raises(ValueError, match="exceeds the limit"):
        StoreStream.open(
            MemoryStore(max_value=1000), SECRET, Role.DIALER, params=StoreParams(value_size=2000)
        )


async def test_planted_garbage_is_rejected_and_the_stream_completes() -> None:
    from keywire.store.schedule import KeySchedule

    store = MemoryStore()
    keys = KeySchedule.derive(SECRET, Role.DIALER)
    for index in (0, 2, 5):
        store.raw_put(keys.write.frame_id(index), b"\x13" * 300)  # does not open
    store.raw_put(keys.write.frame_id(3), b"\x00" * (2 << 20))  # oversized
    a = StoreStream.open(store, SECRET, Role.LISTENER, params=StoreParams(**FAST))
    await asyncio.sleep(0.05)
    b = StoreStream.open(store, SECRET, Role.DIALER, params=StoreParams(window=4, **FAST))
    try:
        data = random_bytes(200_000, 4)
        async with asyncio.timeout(10):
            _, got = await asyncio.gather(send_all(b, data), a.read_all())
        assert got == data
        reasons = [r.reason for r in a.rejections]
        assert any("failed to decrypt" in r for r in reasons)
        assert any("exceeds the limit" in r for r in reasons)
    finally:
        await a.abort()
        await b.abort()
