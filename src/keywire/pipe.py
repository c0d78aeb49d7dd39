"""Byte pipes: the layer below secure transforms and mux (a TCP socket, a WebSocket, box-stream).

A ``Pipe`` is one bidirectional byte stream with half-close and no stream ids. Transforms take a
pipe and return a pipe (shs, noauth) or a Connection (mux). A chain that ends in a pipe becomes a
``SingleStreamConnection``: a connection with exactly one stream, as multiserver peers expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
from abc import ABC, abstractmethod
from collections.abc import Awaitable

from .errors import Code, ConnectionClosed, StreamError, UnsupportedError
from .stream import CLOSE_TIMEOUT, Connection, RemoteIdentity, Stream, finished_future

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
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = await self.read(n - got)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)


class StreamPipe(Pipe):
    """A pipe over asyncio's StreamReader/StreamWriter (TCP, Unix sockets, SOCKS)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str = ""
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.peer = peer
        self._write_closed = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._reader.read(max_bytes)
        except (ConnectionError, OSError) as exc:
            raise StreamError(Code.NETWORK_ERROR, f"{self.peer or 'socket'}: {exc}") from None

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except (ConnectionError, OSError) as exc:
            raise StreamError(Code.NETWORK_ERROR, f"{self.peer or 'socket'}: {exc}") from None

    async def write(self, data: bytes) -> None:
        if self._write_closed:
            raise StreamError(Code.CLOSED, "write after close_write")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise StreamError(Code.NETWORK_ERROR, f"{self.peer or 'socket'}: {exc}") from None

    async def close_write(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        try:
            if self._writer.can_write_eof():
                self._writer.write_eof()
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise StreamError(Code.NETWORK_ERROR, f"{self.peer or 'socket'}: {exc}") from None

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


class PipeStream(Stream):
    """The one stream of a chain without multiplexing.

    A plain pipe carries no codes: ``reset`` aborts the pipe (the peer sees network-error),
    ``stop_sending`` stops delivering what arrives and fails local reads with the code.
    """

    def __init__(self, pipe: Pipe, on_done: asyncio.Event) -> None:
        self._pipe = pipe
        self._read_error: StreamError | None = None
        self._write_error: StreamError | None = None
        self._read_eof = False
        self._write_closed = False
        self._done = on_done
        self._reading = False
        self._writing = False
        #: reads and drops what the peer still sends while a graceful close waits
        self._drain: asyncio.Task[None] | None = None
        self._last_input = 0.0

    async def read(self, n: int = -1) -> bytes:
        if self._read_error is not None:
            raise self._read_error
        if self._read_eof:
            return b""
        if self._reading:
            raise RuntimeError("read() called while another read is waiting on this stream")
        self._reading = True
        try:
            data = await self._pipe.read(65536 if n < 0 else n)
        except StreamError as exc:
            self._broken(exc)
            raise
        finally:
            self._reading = False
        if self._read_error is not None:
            raise self._read_error
        if not data:
            self._read_eof = True
            self._check_done()
        return data

    async def write(self, data: bytes) -> None:
        if self._write_error is not None:
            raise self._write_error
        if self._write_closed:
            raise StreamError(Code.CLOSED, "write after close_write")
        self._writing = True
        try:
            await self._pipe.write(data)
        except StreamError as exc:
            self._broken(exc)
            raise
        finally:
            self._writing = False

    async def close_write(self) -> None:
        if self._write_closed or self._write_error is not None:
            return
        self._write_closed = True
        try:
            await self._pipe.close_write()
        except StreamError as exc:
            self._broken(exc)
            return
        self._cut_if_no_half_close()
        self._check_done()

    def _cut_if_no_half_close(self) -> None:
        """On a pipe without half-close our FIN also ended the peer's direction: what it had
        not sent yet is lost, so a later read must fail, never return a clean EOF."""
        if not self._pipe.supports_half_close and not self._read_eof and self._read_error is None:
            self._read_error = StreamError(
                Code.NETWORK_ERROR,
                f"{self._pipe.peer or 'this pipe'} cannot half-close: "
                "ending our side cut the peer's",
            )

    def reset(self, code: int = Code.RESET) -> None:
        if self._write_error is None:
            self._write_error = StreamError(code, "stream was reset")
        if self._read_error is None and not self._read_eof:
            self._read_error = StreamError(code, "stream was reset")
        self._pipe.abort()
        self._done.set()

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        if self._read_error is None and not self._read_eof:
            self._read_error = StreamError(code, "reading was stopped locally")
        self._check_done()

    async def close(self, code: int | None = None) -> None:
        if code is not None:
            self.reset(code)
            return
        await self.graceful_close(finish=True, timeout=CLOSE_TIMEOUT)

    async def graceful_close(self, *, finish: bool, timeout: float) -> None:
        """Deliver what was written, then end: goodbye/FIN first (``finish``), then wait (at
        most ``timeout``) until the peer acknowledged our last bytes or ended its side.

        Meanwhile what the peer still sends is read and dropped: closing a socket with unread
        input makes the kernel answer RST, which can destroy our last bytes in the peer's
        receive buffer. Once ours are acknowledged the socket closes as soon as the peer is
        quiet, and after ``LINGER_AFTER_ACK`` even if it keeps sending (its writes then fail,
        as for any stream the peer still sends on). Without ``finish`` (a close with an error
        code, which this chain cannot carry) the pipe is aborted after the delivery, so the
        peer reads the bytes and then an error, never a clean EOF.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._writing:
            self.reset(Code.CLOSED)  # a truncated write must not end in a clean EOF
            return
        if self._write_error is not None:
            self._pipe.abort()
            self._done.set()
            return
        try:
            if finish and not self._write_closed:
                self._write_closed = True
                async with asyncio.timeout_at(deadline):
                    await self._pipe.close_write()
                self._cut_if_no_half_close()
            drain = self._start_drain()
            acked_at: float | None = None
            poll = ACK_POLL / 8
            while not drain.done() and (now := loop.time()) < deadline:
                pending = unacknowledged(self._pipe)
                if pending is None and not finish:
                    # no FIN went out, so the peer's end will not come: without a way to ask
                    # what is unacknowledged, give the last bytes one linger, then abort
                    deadline = min(deadline, now + LINGER_AFTER_ACK)
                    await asyncio.wait({drain}, timeout=deadline - now)
                    break
                if pending == 0:
                    acked_at = now if acked_at is None else acked_at
                    if now - self._last_input > ACK_POLL * 2 or now - acked_at >= LINGER_AFTER_ACK:
                        break
                await asyncio.wait({drain}, timeout=poll if pending is not None else deadline - now)
                poll = min(poll * 2, ACK_POLL)
        except (StreamError, TimeoutError):
            self._pipe.abort()
            self._done.set()
            return
        except asyncio.CancelledError:
            self._pipe.abort()
            self._done.set()
            raise
        if self._read_error is None and not self._read_eof:
            self._read_error = StreamError(Code.CLOSED, "stream closed locally")
        if self._write_error is None and not self._write_closed:
            self._write_error = StreamError(Code.CLOSED, "connection closed locally")
        self._done.set()
        if finish:
            await self._end_pipe()
        else:
            self._pipe.abort()
        if self._drain is not None:
            self._drain.cancel()

    def _start_drain(self) -> asyncio.Task[None]:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drop_input())
        return self._drain

    async def _drop_input(self) -> None:
        """Read until the peer's end; if the application is reading, let its read do it."""
        loop = asyncio.get_running_loop()
        while not self._read_eof:
            if self._reading:
                await asyncio.sleep(ACK_POLL)
                continue
            try:
                self._reading = True
                try:
                    data = await self._pipe.read(65536)
                finally:
                    self._reading = False
            except StreamError:
                return
            if not data:
                self._read_eof = True
            self._last_input = loop.time()

    async def _end_pipe(self) -> None:
        try:
            async with asyncio.timeout(1.0):
                await self._pipe.close()
        except (TimeoutError, StreamError, OSError):
            self._pipe.abort()

    def _broken(self, error: StreamError) -> None:
        """The pipe itself failed: both halves are dead, whether or not anyone uses the other.

        (Waiting for the application to also read or write the other half would keep the
        connection, its socket and the server's tasks forever when it never does, e.g. a
        handler that stops at the write that failed because the peer vanished.)
        """
        if self._read_error is None and not self._read_eof:
            self._read_error = error
        if self._write_error is None:
            self._write_error = error
        self._pipe.abort()
        self._done.set()

    def _check_done(self) -> None:
        read_done = self._read_eof or self._read_error is not None
        write_done = self._write_closed or self._write_error is not None
        if read_done and write_done:
            self._done.set()


class OneStreamConnection(Connection):
    """A connection that carries exactly one stream (a chain without ``~mux``, a store stream).

    Whichever of ``open_stream`` / ``accept_stream`` is called first gets the stream; a second
    ``open_stream`` is unsupported and a second ``accept_stream`` waits for the end, since no
    other stream will come. ``ended`` is set when the stream (and so the connection) is over.
    """

    #: how errors name a connection without an address, what they advise, how a wait ends
    _unnamed = "this chain"
    _advice = ""
    _ended_text = "stream ended"

    def __init__(self, stream: Stream, ended: asyncio.Event, address: str) -> None:
        self._one = stream
        self._ended = ended
        self.address = address
        self._taken = False
        self._closed: ConnectionClosed | None = None

    def _take(self) -> Stream:
        ended = self.close_error  # a local close, or the stream (so the connection) is over
        if ended is not None:
            raise ended
        if self._taken:
            raise UnsupportedError(
                f"{self.address or self._unnamed} carries one stream{self._advice}"
            )
        self._taken = True
        return self._one

    async def open_stream(self) -> Stream:
        return self._take()

    async def accept_stream(self) -> Stream:
        if self._taken:
            await self._ended.wait()
            raise self._closed or ConnectionClosed(Code.NONE, self._ended_text)
        return self._take()

    def _natural_end(self) -> ConnectionClosed:
        """How the connection ended when nobody closed it: its stream finished."""
        return ConnectionClosed(Code.NONE, "stream ended")

    @property
    def closed(self) -> bool:
        return self._closed is not None or self._ended.is_set()

    @property
    def close_error(self) -> ConnectionClosed | None:
        if self._closed is None and self._ended.is_set():
            return self._natural_end()
        return self._closed

    async def wait_closed(self) -> ConnectionClosed:
        await self._ended.wait()
        return self.close_error or ConnectionClosed(Code.NONE)


class SingleStreamConnection(OneStreamConnection):
    """The one stream of a chain without ``~mux`` (add ``~mux`` to the address for many)."""

    _advice = "; add ~mux for more"
    _ended_text = "single-stream connection ended"

    def __init__(self, pipe: Pipe, address: str, remote: RemoteIdentity | None = None) -> None:
        self._pipe = pipe
        self.remote = remote if remote is not None else pipe.remote
        self._done = asyncio.Event()
        super().__init__(PipeStream(pipe, self._done), self._done, address)

    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Graceful: what was written is delivered (goodbye/FIN with code 0), bounded by
        ``close_timeout``; see ``PipeStream.graceful_close``."""
        if self._closed is not None:
            return
        self._closed = ConnectionClosed(code, reason or "closed locally")
        stream = self._one
        assert isinstance(stream, PipeStream)
        await stream.graceful_close(finish=code == Code.NONE, timeout=self.close_timeout)
        self._done.set()

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        """Tear the pipe down now (this chain carries no codes: the peer sees network-error,
        or EOF over ``noauth``)."""
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason or "aborted locally")
        self._one.reset(code)
        self._done.set()
        return finished_future()

    @property
    def transport_name(self) -> str:
        return self.address.split("~", 1)[0].split(":", 1)[0] or "pipe"
