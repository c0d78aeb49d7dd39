"""``close(code)`` and ``abort(code)`` of a store connection reach the peer: its reads fail with
the code after what was written, its writes fail with it, and it finishes without acks from an
end that has gone (its ``wait_closed`` gives the code, remote). The sans-IO part runs in the
deterministic simulation; the shell over the memory store and a real redis-server, including
one that is stopped (SIGSTOP) when we abort: the abort still returns promptly."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import struct
import time

import pytest

from keywire.errors import ConnectionClosed, StreamError
from keywire.store import MemoryStore, RedisStore, StoreConnection, StoreStream
from keywire.store.backendops import LAST_WORDS_TIMEOUT
from keywire.store.core import Mode, StoreCore, StoreParams
from keywire.store.frame import Frame, FrameType, open_frame
from keywire.store.schedule import KeySchedule, Role

from .conftest import RedisProcess
from .sim import Endpoint, SimStore

SECRET = bytes(range(40, 72))
CODE = 9
PAYLOAD = random.Random(9).randbytes(150_000)
FAST = StoreParams(window=8, rto_min=0.05, rto_initial=0.2)


def pair(params: StoreParams) -> tuple[Endpoint, Endpoint]:
    """(a, b): a is the listener, b the dialer."""
    return (
        Endpoint(StoreCore(SECRET, Role.LISTENER, params, Mode.DUPLEX)),
        Endpoint(StoreCore(SECRET, Role.DIALER, params, Mode.DUPLEX)),
    )


def frames_of(store: SimStore, role: Role) -> list[Frame]:
    keys = KeySchedule.derive(SECRET, role).write
    out: list[Frame] = []
    while (value := store.data.get(keys.frame_id(len(out)))) is not None:
        out.append(open_frame(keys, len(out), value, 1 << 20))
    return out


def codes(frames: list[Frame], ftype: FrameType) -> list[int]:
    return [struct.unpack(">I", f.payload)[0] for f in frames if f.type is ftype]


def assert_told(b: Endpoint, code: int) -> None:
    """b's reads ended with the peer's code (never EOF), and its open direction was stopped."""
    assert not b.eof
    last = b.errors[-1].error
    assert last.wire_code == code and last.remote
    assert [(f.error.wire_code, f.error.remote) for f in b.write_failures] == [(code, True)]


# -- the core, simulated ---------------------------------------------------------------------
@pytest.mark.parametrize(("loss", "seed"), [(0.0, 1), (0.2, 2), (0.3, 3)])
def test_goodbye_delivers_the_data_then_the_code_and_the_peer_finishes_alone(
    loss: float, seed: int
) -> None:
    """a writes, then goodbye(9) while b still writes: b reads every byte, then the code; its
    writes fail with the code; once a's frames are acked a is gone, and b still finishes."""
    a, b = pair(StoreParams(window=4, value_size=256, rto_initial=0.2, seed=seed))
    data = PAYLOAD[:600]
    assert a.core.write(data) == len(data)
    b.outbox, b.close_after = PAYLOAD, False
    a.core.goodbye(CODE)
    store = SimStore(loss=loss, duplicate=0.2, jitter=0.01, seed=seed)
    store.run([a, b], lambda: a.core.acked, limit=300)
    store.run([b], lambda: b.core.finished, limit=300)  # a has gone: b finishes alone
    assert bytes(b.received) == data
    assert_told(b, CODE)
    ours = frames_of(store, Role.LISTENER)
    assert FrameType.END not in [f.type for f in ours]
    assert codes(ours, FrameType.RESET) == [CODE] and codes(ours, FrameType.STOP_SENDING) == [CODE]
    assert codes(frames_of(store, Role.DIALER), FrameType.RESET) == [CODE]


def test_goodbye_after_the_peers_end_still_sends_the_stop() -> None:
    """b ended its direction before a's goodbye: the StopSending goes out anyway (it needs no
    ack, only a read-back), so b, done both ways, finishes without a."""
    a, b = pair(StoreParams(window=4, value_size=256, seed=4))
    b.outbox = b"b's last words"
    store = SimStore(seed=4)
    store.run([a, b], lambda: a.eof)
    a.core.goodbye(CODE)
    store.run([a, b], lambda: a.core.acked and a.core.flushed)
    store.run([b], lambda: b.core.finished)
    assert bytes(a.received) == b"b's last words"
    assert b.errors[-1].error.wire_code == CODE and b.errors[-1].error.remote
    assert codes(frames_of(store, Role.LISTENER), FrameType.STOP_SENDING) == [CODE]


def test_last_words_of_an_abort_mid_transfer() -> None:
    """a aborts with its window full of unacked frames: last_words puts Reset and
    StopSending outside the window; b reads a prefix of the data, then the code, and finishes
    alone."""
    a, b = pair(StoreParams(window=4, value_size=256, seed=5))
    a.outbox = PAYLOAD
    b.outbox, b.close_after = b"b is still writing", False
    store = SimStore(seed=5)
    store.run([a, b], lambda: len(b.received) > 3000)
    for op in a.core.last_words(CODE, store.now):
        store.start(a, op)
    store.run([b], lambda: b.core.finished, limit=300)
    assert 3000 < len(b.received) < len(PAYLOAD)
    assert bytes(b.received) == PAYLOAD[: len(b.received)]
    assert_told(b, CODE)
    assert codes(frames_of(store, Role.LISTENER), FrameType.RESET) == [CODE]


def test_last_words_of_a_stream_nobody_knows_write_nothing() -> None:
    """A listener that wrote nothing and heard nothing (its dialer never came) leaves the
    store as it was; so does a graceful stream whose both directions ended."""
    lonely = StoreCore(SECRET, Role.LISTENER, StoreParams(), Mode.DUPLEX)
    assert lonely.last_words(CODE, 0.0) == []
    a, b = pair(StoreParams(window=4, value_size=256, seed=6))
    a.outbox, b.outbox = b"x", b"y"
    store = SimStore(seed=6)
    store.run([a, b], lambda: a.core.finished and b.core.finished)
    assert a.core.last_words(CODE, store.now) == []


# -- the shell -------------------------------------------------------------------------------
async def _pair(
    store: object, *, own: bool = False, linger: float = 5.0
) -> tuple[StoreConnection, StoreConnection]:
    secret = os.urandom(32)
    conns = []
    for role in (Role.DIALER, Role.LISTENER):
        backend = RedisStore(store) if isinstance(store, str) else store
        stream = StoreStream.open(backend, secret, role, params=FAST)  # type: ignore[arg-type]
        owned = backend if own else None
        conns.append(stream.connection.named("test~stream", linger=linger, owns_backend=owned))  # type: ignore[arg-type]
    return conns[0], conns[1]


async def _peer_outcome(
    peer: StoreConnection,
) -> tuple[bytes, BaseException | None, ConnectionClosed]:
    stream = await peer.accept_stream()
    got = bytearray()
    end: BaseException | None = None
    try:
        while data := await stream.read(1 << 16):
            got += data
    except StreamError as exc:
        end = exc
    return bytes(got), end, await peer.wait_closed()


async def test_close_with_code_delivers_the_bytes_then_the_code() -> None:
    """1 MiB written, then close(9) at once: the peer reads all of it, then StreamError(9),
    and its wait_closed gives 9 from the peer (not the 5 s linger: it is told)."""
    client, server = await _pair(MemoryStore())
    payload = PAYLOAD * 7
    try:
        async with asyncio.timeout(20):
            ours = await client.open_stream()
            peer = asyncio.ensure_future(_peer_outcome(server))
            await ours.write(payload)
            started = time.monotonic()
            await client.close(CODE)
            closing = time.monotonic() - started
            got, end, reason = await peer
    finally:
        await client.abort()
        await server.abort()
    assert got == payload
    assert isinstance(end, StreamError) and end.wire_code == CODE and end.remote
    assert reason.wire_code == CODE and reason.remote
    assert closing < 4.0, f"close(code) took {closing:.1f} s"
    with pytest.raises(ConnectionClosed):
        await server.open_stream()


async def test_close_with_code_after_the_peer_ended_its_direction() -> None:
    client, server = await _pair(MemoryStore())
    try:
        async with asyncio.timeout(10):
            ours = await client.open_stream()
            await ours.write(b"hello")
            theirs = await server.accept_stream()
            assert await theirs.readexactly(5) == b"hello"
            await theirs.write(b"bye")
            await theirs.close_write()
            assert await ours.read_all() == b"bye"
            await client.close(CODE)
            with pytest.raises(StreamError) as info:
                await theirs.read()
            reason = await server.wait_closed()
    finally:
        await client.abort()
        await server.abort()
    assert info.value.wire_code == CODE and info.value.remote
    assert reason.wire_code == CODE and reason.remote


async def test_abort_through_redis_tells_the_peer(redis_server: RedisProcess) -> None:
    client, server = await _pair(redis_server.url, own=True)
    try:
        async with asyncio.timeout(15):
            ours = await client.open_stream()
            peer = asyncio.ensure_future(_peer_outcome(server))
            await ours.write(PAYLOAD)
            await client.abort(CODE)
            got, end, reason = await peer
    finally:
        await client.abort()
        await server.abort()
    assert got == PAYLOAD[: len(got)]
    assert isinstance(end, StreamError) and end.wire_code == CODE and end.remote
    assert reason.wire_code == CODE and reason.remote


async def test_abort_returns_promptly_when_the_store_is_stopped(redis_server: RedisProcess) -> None:
    """Redis is stopped (SIGSTOP) before the abort: abort() returns at once, and awaiting it
    (it owns the backend, so it waits for the last puts before closing it) takes at most
    the last words' bound."""
    assert redis_server.proc is not None
    client, server = await _pair(redis_server.url, own=True)
    try:
        async with asyncio.timeout(15):
            ours = await client.open_stream()
            await ours.write(b"hello")
            theirs = await server.accept_stream()
            assert await theirs.readexactly(5) == b"hello"
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                waiting = client.abort(CODE)
                returned = time.monotonic() - started
                await waiting
                awaited = time.monotonic() - started
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
    finally:
        await client.abort()
        await server.abort()
    print(f"abort returned in {returned * 1000:.1f} ms, awaited in {awaited:.2f} s")
    assert returned < 0.05
    assert awaited < LAST_WORDS_TIMEOUT + 1.0
    assert client.closed
    assert (await client.wait_closed()).wire_code == CODE


async def test_abort_of_a_session_nobody_joined_leaves_the_store_empty() -> None:
    store = MemoryStore()
    stream = StoreStream.open(store, os.urandom(32), Role.LISTENER, params=FAST)
    conn = stream.connection.named("test~stream")
    await asyncio.sleep(0.05)
    await conn.abort(CODE)
    assert len(store) == 0
