"""Byte pipes: the layer below secure transforms and mux (a TCP socket, a WebSocket, box-stream).

A ``Pipe`` is one bidirectional byte stream with half-close and no stream ids. Transforms take a
pipe and return a pipe (shs, noauth) or a Connection (mux). A chain that ends in a pipe becomes a
``keywire.pipeconn.SingleStreamConnection``: a connection with exactly one stream, as multiserver
peers expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
from abc import ABC, abstractmethod

from .errors import Code, StreamError
from .stream import RemoteIdentity, read_exactly

#: how often a closing stream checks whether the peer has acknowledged its last bytes (the
#: first checks come sooner: on a LAN the answer takes a millisecond)
ACK_POLL = 0.005
#: once they are, how long a close keeps reading for the end of a peer that still sends
LINGER_AFTER_ACK = 0.25


def socket_unacknowledged(sock: object) -> int | None:
    """Bytes written to a TCP or Unix socket that the peer has not acknowledged (TCP) or not
    read yet (Unix), from the kernel (``SIOCOUTQ``); None where that cannot be asked."""
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
        if fd < 0:
            return None
        raw = fcntl.ioctl(fd, termios.TIOCOUTQ, struct.pack("i", 0))
    except (OSError, ValueError):
        return None
    return int(struct.unpack("i", raw)[0])


def unacknowledged(pipe: Pipe) -> int | None:
    """What ``pipe`` (or the carrier under a framing pipe) has sent but the peer has not yet
    acknowledged; None when the pipe cannot tell."""
    seen = 0
    current: object = pipe
    while current is not None and seen < 8:
        ask = getattr(current, "unacknowledged", None)
        if callable(ask):
            result = ask()
            return result if isinstance(result, int) else None
        current = getattr(current, "inner", None)
        seen += 1
    return None


class Pipe(ABC):
    """A bidirectional byte stream with half-close."""

    #: a multiserver-style description of the far end, e.g. ``net:127.0.0.1:51234``
    peer: str = ""
    #: what a secure transform proved about the far end
    remote: RemoteIdentity = RemoteIdentity()
    #: True when EOF from ``read`` is a real end-of-stream marker (shs goodbye); False when the
    #: pipe cannot tell a FIN from a crash (raw TCP: any close reads as EOF)
    eof_is_authenticated: bool = False
    #: False where the carrier cannot half-close (WebSocket: ending the write side closes the
    #: socket); framing layers with an in-band end (box-stream goodbye) then keep the carrier
    #: open until both directions are done
    supports_half_close: bool = True

    @abstractmethod
    async def read(self, max_bytes: int = 65536) -> bytes:
        """Some bytes, or ``b""`` at end of stream; raises ``StreamError`` on a broken pipe."""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Write all of ``data``, waiting for the transport to drain."""

    @abstractmethod
    async def close_write(self) -> None:
        """Half-close: the peer reads EOF."""

    @abstractmethod
    def abort(self) -> None:
        """Tear the pipe down at once (no orderly end)."""

    async def close(self) -> None:
        """Orderly close of both directions."""
        with contextlib.suppress(Exception):
            await self.close_write()
        self.abort()

    async def readexactly(self, n: int) -> bytes:
        return await read_exactly(self.read, n)

    #: the write side ended (``_end_writes``)
    _write_closed: bool = False

    def _check_writable(self) -> None:
        """For ``write``: a write after ``close_write`` is the caller's bug, said plainly."""
        if self._write_closed:
            raise StreamError(Code.CLOSED, "write after close_write")

    def _end_writes(self) -> bool:
        """For ``close_write``: mark the write side ended; False if it already was."""
        if self._write_closed:
            return False
        self._write_closed = True
        return True


class StreamPipe(Pipe):
    """A pipe over asyncio's StreamReader/StreamWriter (TCP, Unix sockets, SOCKS)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str = ""
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.peer = peer

    async def read(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._reader.read(max_bytes)
        except (ConnectionError, OSError) as exc:
            raise self._lost(exc) from None

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except (ConnectionError, OSError) as exc:
            raise self._lost(exc) from None

    async def write(self, data: bytes) -> None:
        self._check_writable()
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise self._lost(exc) from None

    async def close_write(self) -> None:
        if not self._end_writes():
            return
        try:
            if self._writer.can_write_eof():
                self._writer.write_eof()
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: Exception) -> StreamError:
        """The error every method raises when the socket fails, naming the peer."""
        return StreamError(Code.NETWORK_ERROR, f"{self.peer or 'socket'}: {exc}")

    def abort(self) -> None:
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()

    def unacknowledged(self) -> int | None:
        """Bytes still in asyncio's buffer plus those the peer's kernel has not acknowledged."""
        if self._writer.transport.is_closing():
            return None
        queued = socket_unacknowledged(self._writer.get_extra_info("socket"))
        if queued is None:
            return None
        return queued + self._writer.transport.get_write_buffer_size()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.close_write()
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
