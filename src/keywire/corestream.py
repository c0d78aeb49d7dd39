"""``CoreStream``: one stream of the shared shell (``keywire.shell.CoreConnection``).

Reads come from a ``ReceiveBuffer`` the connection feeds from ``StreamData`` events; writes hand
bytes to the adapter as it grants credit and wait for ``CreditAvailable`` when it grants none.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import TYPE_CHECKING

from .errors import Code, ConnectionClosed, StreamError
from .stream import ReceiveBuffer, Stream, fresh

if TYPE_CHECKING:
    from .shell import CoreConnection


class CoreStream(Stream):
    """One stream of a ``CoreConnection``: a receive buffer and a credit-gated writer."""

    def __init__(self, conn: CoreConnection, stream_id: int) -> None:
        self.id = stream_id
        self._conn = conn
        # the connection, not this stream, is called back: no cycle through the buffer
        self._recv = ReceiveBuffer(on_consumed=partial(conn._consumed, stream_id))
        self._write_lock = asyncio.Lock()
        self._write_closed = False
        self._write_error: StreamError | None = None
        self._credit: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} of {self._conn.address or '?'}>"

    # -- reading --------------------------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        return await self._recv.read(n)

    async def readexactly(self, n: int) -> bytes:
        return await self._recv.readexactly(n)

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        conn = self._conn
        if conn._error is None:
            conn._adapter.stop_sending(self.id, code)
            conn.update_soon()
        self._recv.fail(StreamError(code, "reading was stopped locally"))

    # -- writing --------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._write_error is not None:
            raise fresh(self._write_error)
        if self._write_closed:
            raise StreamError(Code.CLOSED, "write after close_write")
        if self._conn._error is not None:
            raise self._conn._stream_error()

    async def write(self, data: bytes) -> None:
        """Queue ``data`` as the adapter grants credit; waits while it grants none."""
        async with self._write_lock:
            # an immutable copy lets a core queue slices of it without copying again
            view = memoryview(data if isinstance(data, bytes) else bytes(data)).cast("B")
            conn = self._conn
            while True:
                self._check_writable()
                if not view:
                    return
                try:
                    sent = conn._adapter.send(self.id, view, False)
                except (StreamError, ConnectionClosed):
                    conn.update()  # the core may know of an ending not yet delivered
                    self._check_writable()
                    raise
                if sent:
                    view = view[sent:]
                    conn.update_soon()
                else:
                    await self._wait_credit()

    async def _wait_credit(self) -> None:
        self._credit = self._conn._loop.create_future()
        self._conn._blocked[self] = None
        try:
            await self._credit
        finally:
            self._credit = None
            self._conn._blocked.pop(self, None)

    def _wake_writer(self) -> None:
        if self._credit is not None and not self._credit.done():
            self._credit.set_result(None)

    def _fail_writes(self, error: StreamError) -> None:
        if self._write_error is None and not self._write_closed:
            self._write_error = error
        self._wake_writer()

    async def close_write(self) -> None:
        async with self._write_lock:
            if self._write_closed:
                return
            self._check_writable()
            self._finish()
            # FIN goes out now, not on the next loop iteration: whatever the caller does next
            # (even beneath the shell) comes after it
            self._conn.update()

    def _finish(self) -> None:
        """Queue FIN (the caller updates: at once, or once for all streams on close)."""
        self._write_closed = True
        self._conn._adapter.send(self.id, memoryview(b""), True)

    def reset(self, code: int = Code.RESET) -> None:
        if self._write_closed or self._write_error is not None:
            return
        conn = self._conn
        if conn._error is None:
            conn._adapter.reset(self.id, code)
            conn.update_soon()
        self._write_error = StreamError(code, "stream was reset locally")
        self._wake_writer()

    def _end_for_close(self, *, finish: bool) -> None:
        """A graceful connection close: a write still in progress cannot complete, so its
        stream is reset (a truncated stream never reads as EOF); otherwise FIN (``finish``)."""
        if self._write_closed or self._write_error is not None:
            return
        if self._write_lock.locked():
            self.reset(Code.CLOSED)
        elif finish:
            with contextlib.suppress(StreamError):
                self._finish()

    def _connection_ended(self, error: StreamError) -> None:
        # bytes that arrived stay readable; the error comes after them (and never after FIN)
        if not self._recv.ended:
            self._recv.fail(error, discard=False)
        self._fail_writes(error)
