"""An in-memory byte pipe pair: a carrier for toy transports and for tests without sockets.

Each direction is a bounded buffer, so a writer waits while the reader lags (the same
backpressure a socket gives); ``close_write`` is an authenticated FIN and ``abort`` breaks both
directions with network-error, so a transport built on it can tell a clean end from a crash.
"""

from __future__ import annotations

import asyncio

from ..errors import Code, StreamError
from ..pipe import Pipe
from ..stream import wake_all

#: bytes one direction holds before its writer waits
DEFAULT_CAPACITY = 64 * 1024


class _Direction:
    """One direction's buffer, its end state and the tasks waiting on it."""

    def __init__(self, capacity: int) -> None:
        self.buffer = bytearray()
        self.capacity = capacity
        self.eof = False
        self.error: StreamError | None = None
        self._waiters: list[asyncio.Future[None]] = []

    async def changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        wake_all(waiters)

    def fail(self, error: StreamError) -> None:
        if self.error is None:
            self.error = error
            self.buffer.clear()
        self.wake()


class MemoryPipe(Pipe):
    """One end of ``memory_pipe_pair``."""

    eof_is_authenticated = True
    supports_half_close = True

    def __init__(self, inbound: _Direction, outbound: _Direction, peer: str) -> None:
        self._in = inbound
        self._out = outbound
        self.peer = peer

    async def read(self, max_bytes: int = 65536) -> bytes:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        source = self._in
        while not source.buffer:
            if source.error is not None:
                raise source.error
            if source.eof:
                return b""
            await source.changed()
        if source.error is not None:
            raise source.error
        data = bytes(source.buffer[:max_bytes])
        del source.buffer[:max_bytes]
        source.wake()
        return data

    async def write(self, data: bytes) -> None:
        sink = self._out
        view = memoryview(data)
        while view:
            if sink.error is not None:
                raise sink.error
            if sink.eof:
                raise StreamError(Code.CLOSED, "write after close_write")
            room = sink.capacity - len(sink.buffer)
            if room <= 0:
                await sink.changed()
                continue
            sink.buffer += view[:room]
            view = view[room:]
            sink.wake()
        if sink.error is not None:
            raise sink.error

    async def close_write(self) -> None:
        if self._out.error is None:
            self._out.eof = True
            self._out.wake()

    async def close(self) -> None:
        """FIN after what is buffered (the peer still reads it all); our unread input is
        dropped and the peer's further writes fail, as after closing a socket."""
        await self.close_write()
        self._in.fail(StreamError(Code.NETWORK_ERROR, f"memory pipe to {self.peer} was closed"))

    def unacknowledged(self) -> int | None:
        """Bytes written that the peer has not read yet (how a graceful close knows when
        everything was delivered); None once the pipe is broken."""
        if self._out.error is not None:
            return None
        return len(self._out.buffer)

    def abort(self) -> None:
        error = StreamError(Code.NETWORK_ERROR, f"memory pipe to {self.peer} was aborted")
        self._in.fail(error)
        self._out.fail(error)


def memory_pipe_pair(
    capacity: int = DEFAULT_CAPACITY, names: tuple[str, str] = ("memory:a", "memory:b")
) -> tuple[Pipe, Pipe]:
    """Two connected pipes; each direction buffers at most ``capacity`` bytes.

    ``names`` are the ``peer`` descriptions each end reports (the first end's peer is the
    second name). No event loop is needed to create them.
    """
    if capacity < 1:
        raise ValueError("capacity must be at least 1 byte")
    a_to_b = _Direction(capacity)
    b_to_a = _Direction(capacity)
    a = MemoryPipe(b_to_a, a_to_b, names[1])
    b = MemoryPipe(a_to_b, b_to_a, names[0])
    return a, b
