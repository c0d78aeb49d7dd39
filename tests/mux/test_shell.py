"""The shared shell (``keywire.shell``) seen through mux: accept order, stored errors."""

from __future__ import annotations

import asyncio
import traceback

import pytest

from keywire.errors import Code, ConnectionClosed, StreamError
from keywire.stream import DatagramQueue, ReceiveBuffer

from .conftest import TcpPair


async def test_concurrent_accepts_are_served_in_order_each_with_its_own_stream(
    pair: TcpPair,
) -> None:
    async with asyncio.timeout(10):
        waiters = [asyncio.create_task(pair.server.accept_stream()) for _ in range(3)]
        await asyncio.sleep(0.01)  # all three are waiting, in this order
        opened = []
        for n in range(3):
            stream = await pair.client.open_stream()
            await stream.write(bytes([n]))
            opened.append(stream)
        accepted = [await w for w in waiters]
        assert [s.id for s in accepted] == [s.id for s in opened]
        assert [await s.readexactly(1) for s in accepted] == [b"\x00", b"\x01", b"\x02"]
        late = asyncio.create_task(pair.server.accept_stream())
        await asyncio.sleep(0.01)
        await pair.client.close()
        with pytest.raises(ConnectionClosed):
            await late


async def test_a_stored_read_error_is_raised_as_a_fresh_copy_each_time() -> None:
    buffer = ReceiveBuffer()
    buffer.fail(StreamError(Code.RESET, "gone", remote=True))
    raised = []
    for _ in range(3):
        with pytest.raises(StreamError) as info:
            await buffer.read()
        raised.append(info.value)
    assert len({id(e) for e in raised}) == 3
    assert all(e.code == Code.RESET and e.remote and "gone" in str(e) for e in raised)
    # each carries only its own raise: no traceback or chain piles up on a shared object
    assert all(len(traceback.extract_tb(e.__traceback__)) <= 3 for e in raised)
    assert all(e.__context__ is None for e in raised)
    assert buffer._error is not None and buffer._error.__traceback__ is None


async def test_a_stored_datagram_error_is_raised_as_a_fresh_copy_each_time() -> None:
    queue = DatagramQueue()
    queue.fail(ConnectionClosed(Code.TIMEOUT, "idle"))
    first, second = [], []
    for bucket in (first, second):
        with pytest.raises(ConnectionClosed) as info:
            await queue.get()
        bucket.append(info.value)
    assert first[0] is not second[0] and first[0].code == second[0].code == Code.TIMEOUT
