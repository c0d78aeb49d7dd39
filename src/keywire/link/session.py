"""A relayed, sealed Link session as a keywire ``Pipe``: the asyncio shell over the channel.

Every WebSocket message after the splice is one sealed frame. Stream bytes and the stream's end
travel as sealed ``STREAM``/``STREAM_END`` frames (so EOF is authenticated); Link's application
envelope frames are handed to ``on_envelope``. A frame that fails to open, or the relay closing
the socket, ends the pipe with an error that says which.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from websockets.asyncio.connection import Connection as WsConnection
from websockets.exceptions import ConnectionClosed as WsClosed

from ..errors import Code, StreamError
from ..pipe import Pipe
from ..stream import ReceiveBuffer, RemoteIdentity
from .sealed import Kind, SealedChannel

#: stop reading the relay once this many received bytes wait for the application
READ_LIMIT = 1 << 20

RELAY_CLOSE_REASONS = {
    4000: "bad request",
    4002: "rate limited",
    4003: "peer gone",
    4004: "idle",
    4005: "replaced",
    4006: "slow peer",
    4007: "register auth failed",
    4010: "not on the allowlist",
    1001: "relay shutting down",
}


def describe_close(exc: WsClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "the relay connection dropped"
    meaning = RELAY_CLOSE_REASONS.get(frame.code, "")
    detail = f" ({meaning})" if meaning else ""
    reason = f": {frame.reason}" if frame.reason else ""
    return f"relay closed the socket with {frame.code}{detail}{reason}"


class LinkPipe(Pipe):
    """Bytes over a sealed, relayed Link session."""

    eof_is_authenticated = True
    #: host side: which paired device this session belongs to
    key_id: bytes | None = None

    def __init__(
        self,
        ws: WsConnection,
        channel: SealedChannel,
        peer: str,
        remote: RemoteIdentity | None = None,
        on_envelope: Callable[[bytes], None] | None = None,
    ) -> None:
        self._ws = ws
        self._channel = channel
        self.peer = peer
        self.remote = remote or RemoteIdentity()
        self.on_envelope = on_envelope
        self._room = asyncio.Event()
        self._room.set()
        self._buffer = ReceiveBuffer(on_consumed=self._consumed)
        self._send_lock = asyncio.Lock()
        self._write_closed = False
        self._error: StreamError | None = None
        self.closed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    def _consumed(self, _n: int) -> None:
        if self._buffer.size < READ_LIMIT:
            self._room.set()

    async def _read_loop(self) -> None:
        try:
            async for message in self._ws:
                if isinstance(message, str):
                    raise StreamError(Code.PROTOCOL_ERROR, "text frame inside a sealed session")
                plaintext = self._channel.open(message)
                if not plaintext:
                    raise StreamError(Code.PROTOCOL_ERROR, "empty sealed frame")
                kind = plaintext[0]
                if kind == Kind.STREAM:
                    self._buffer.feed(plaintext[1:])
                    if self._buffer.size >= READ_LIMIT:
                        self._room.clear()
                        await self._room.wait()
                elif kind == Kind.STREAM_END:
                    self._buffer.feed_eof()
                elif kind in (Kind.ENVELOPE_JSON, Kind.ENVELOPE_FRAMED):
                    if self.on_envelope is not None:
                        self.on_envelope(plaintext)
                else:
                    raise StreamError(Code.PROTOCOL_ERROR, f"unknown sealed frame kind {kind}")
            self._fail(StreamError(Code.NETWORK_ERROR, "the relay closed the link"))
        except WsClosed as exc:
            self._fail(StreamError(Code.NETWORK_ERROR, describe_close(exc)))
        except StreamError as exc:
            self._fail(exc)
            await self._ws.close(1000, "sealed channel failed")
        except asyncio.CancelledError:
            self._fail(StreamError(Code.CANCELLED, "link session aborted"))
            raise
        finally:
            self.closed.set()

    def _fail(self, error: StreamError) -> None:
        if self._error is None:
            self._error = error
        if not self._buffer.ended:
            self._buffer.fail(error, discard=False)
        self._room.set()

    @property
    def error(self) -> StreamError | None:
        return self._error

    async def read(self, max_bytes: int = 65536) -> bytes:
        return await self._buffer.read(max_bytes)

    async def _send(self, plaintexts: list[bytes]) -> None:
        async with self._send_lock:
            try:
                for plaintext in plaintexts:
                    await self._ws.send(self._channel.seal(plaintext))
            except WsClosed as exc:
                raise StreamError(Code.NETWORK_ERROR, describe_close(exc)) from None

    async def write(self, data: bytes) -> None:
        if self._write_closed:
            raise StreamError(Code.CLOSED, "write after close_write")
        if self._error is not None and self._error.code != Code.NETWORK_ERROR:
            raise self._error
        async with self._send_lock:
            try:
                for frame in self._channel.stream_frames(data):
                    await self._ws.send(frame)
            except WsClosed as exc:
                raise StreamError(Code.NETWORK_ERROR, describe_close(exc)) from None

    async def send_envelope(self, plaintext: bytes) -> None:
        """Send one of Link's envelope plaintexts (JSON or framed) on this session."""
        if plaintext[:1] not in (b"{", b"\x01"):
            raise ValueError("an envelope plaintext starts with '{' or 0x01")
        await self._send([plaintext])

    async def close_write(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        await self._send([bytes([Kind.STREAM_END])])

    def abort(self) -> None:
        self._reader.cancel()
        transport = self._ws.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.close_write()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(1000, "done"), 2.0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
