"""The suite itself can fail: each check rejects a transport broken in the way it guards.

The broken transports are mux over a memory pipe with one behaviour spoiled by a thin wrapper
(the healthy original passes every check in test_contract.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace

import pytest

from keywire.errors import Code, ConnectionClosed, StreamError
from keywire.mux.connection import MuxConnection
from keywire.stream import Connection, Stream
from keywire.testing import (
    Capabilities,
    Check,
    ContractError,
    DatagramSupport,
    MakePair,
    check_backpressure,
    check_concurrent_accept,
    check_connection,
    check_datagrams,
    check_eof_iff_fin,
    check_graceful_close,
    check_reset_codes,
    check_stop_sending_codes,
    memory_pipe_pair,
)

pytestmark = pytest.mark.timeout(30)

FAST = Capabilities(timeout=3.0, max_buffered=2 << 20, bulk=256 * 1024)


class WrappedStream(Stream):
    """Delegates everything to a real stream; subclasses spoil one behaviour."""

    def __init__(self, inner: Stream) -> None:
        self.inner = inner

    async def read(self, n: int = -1) -> bytes:
        return await self.inner.read(n)

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close_write(self) -> None:
        await self.inner.close_write()

    def reset(self, code: int = Code.RESET) -> None:
        self.inner.reset(code)

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        self.inner.stop_sending(code)


class WrappedConnection(Connection):
    """Delegates to a real connection, wrapping its streams in ``stream_type``."""

    stream_type: type[WrappedStream] = WrappedStream

    def __init__(self, inner: Connection) -> None:
        self.inner = inner

    async def open_stream(self) -> Stream:
        return self.stream_type(await self.inner.open_stream())

    async def accept_stream(self) -> Stream:
        return self.stream_type(await self.inner.accept_stream())

    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        await self.inner.close(code, reason)

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        return self.inner.abort(code, reason)

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def close_error(self) -> ConnectionClosed | None:
        return self.inner.close_error

    async def wait_closed(self) -> ConnectionClosed:
        return await self.inner.wait_closed()


def pairs(wrapper: type[WrappedConnection]) -> MakePair:
    @contextlib.asynccontextmanager
    async def make_pair() -> AsyncIterator[tuple[Connection, Connection]]:
        a, b = memory_pipe_pair()
        client = MuxConnection(a, client=True, address="memory~mux")
        server = MuxConnection(b, client=False, address="memory~mux")
        try:
            yield wrapper(client), wrapper(server)
        finally:
            for conn in (client, server):
                await conn.abort()

    return make_pair


class ResetReadsAsEof(WrappedStream):
    async def read(self, n: int = -1) -> bytes:
        try:
            return await self.inner.read(n)
        except StreamError:
            return b""


class EarlyEof(WrappedStream):
    async def read(self, n: int = -1) -> bytes:
        try:
            return await asyncio.wait_for(self.inner.read(n), 0.1)
        except TimeoutError:
            return b""


class IgnoresStopSending(WrappedStream):
    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        pass


class UnboundedWrites(WrappedStream):
    """Queues every write and returns at once: no backpressure."""

    def __init__(self, inner: Stream) -> None:
        super().__init__(inner)
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pump = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(StreamError):  # the pair was torn down under the pump
            while (data := await self._queue.get()) is not None:
                await self.inner.write(data)
            await self.inner.close_write()

    async def write(self, data: bytes) -> None:
        self._queue.put_nowait(bytes(data))

    async def close_write(self) -> None:
        self._queue.put_nowait(None)


def connection_with(stream_type: type[WrappedStream]) -> type[WrappedConnection]:
    return type(f"With{stream_type.__name__}", (WrappedConnection,), {"stream_type": stream_type})


class CloseDropsQueued(WrappedConnection):
    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        await self.inner.abort(code or Code.CANCELLED, reason)


class OneAcceptWaiter(WrappedConnection):
    """The kps bug: a second waiting accept_stream is refused."""

    _waiting = False

    async def accept_stream(self) -> Stream:
        if self._waiting:
            raise RuntimeError("accept_stream() is already waiting")
        self._waiting = True
        try:
            return await self.inner.accept_stream()
        finally:
            self._waiting = False


class AcceptHangs(WrappedConnection):
    async def accept_stream(self) -> Stream:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("wrapper", "check", "capabilities", "match"),
    [
        (connection_with(ResetReadsAsEof), check_reset_codes, FAST, "after reset the peer read"),
        (connection_with(EarlyEof), check_eof_iff_fin, FAST, "with no data and no FIN sent"),
        (
            connection_with(IgnoresStopSending),
            check_stop_sending_codes,
            FAST,
            "read after stop_sending neither failed",
        ),
        (connection_with(UnboundedWrites), check_backpressure, FAST, "no backpressure"),
        (CloseDropsQueued, check_graceful_close, FAST, "bytes and closed; the peer read"),
        (OneAcceptWaiter, check_concurrent_accept, FAST, "second waiting accept_stream ended"),
        (AcceptHangs, check_concurrent_accept, FAST, "did not finish within 3 s: hung at"),
        (
            WrappedConnection,
            check_datagrams,
            replace(FAST, datagrams=DatagramSupport()),
            "max_datagram_size is None",
        ),
    ],
    ids=[
        "reset-as-eof",
        "early-eof",
        "stop-sending-ignored",
        "no-backpressure",
        "close-drops-queued",
        "one-accept-waiter",
        "accept-hangs",
        "datagrams-missing",
    ],
)
async def test_check_rejects_broken_transport(
    wrapper: type[WrappedConnection], check: Check, capabilities: Capabilities, match: str
) -> None:
    with pytest.raises(ContractError, match=match):
        await check(pairs(wrapper), capabilities)


async def test_healthy_wrapper_passes() -> None:
    """The wrapper alone breaks nothing, so the failures above come from the spoilt part."""
    async with asyncio.timeout(25):
        await check_connection(pairs(WrappedConnection), replace(FAST, timeout=5.0))


async def test_check_connection_reports_every_failure() -> None:
    with pytest.raises(ExceptionGroup) as info:
        await check_connection(
            pairs(OneAcceptWaiter), FAST, only=("echo", "concurrent_accept", "datagrams")
        )
    assert len(info.value.exceptions) == 1
    assert "check: concurrent_accept" in "".join(getattr(info.value.exceptions[0], "__notes__", []))


async def test_unknown_check_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown checks"):
        await check_connection(pairs(WrappedConnection), FAST, only=("echoes",))
