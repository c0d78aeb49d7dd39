"""The public Stream and Connection contract, and the receive-side machinery they share.

Every transport (mux, QUIC, WebRTC, store, a plain pipe) gives the same semantics:

* ``read`` returns ``b""`` **iff** the peer sent FIN; every other end raises ``StreamError``
  with a registry code.
* ``write`` waits for credit (backpressure) and raises ``StreamError`` once the peer asked us to
  stop sending, or the stream was reset, or the connection died.
* ``close_write`` sends FIN; ``reset(code)`` abandons the sending half; ``stop_sending(code)``
  asks the peer to stop; ``close()`` ends both halves.
* ``Connection.close()`` is graceful: what the application wrote before it is delivered (every
  stream still open for writing gets FIN after its bytes), bounded by ``close_timeout``;
  ``Connection.abort(code)`` is the immediate form and drops whatever is still queued.

``ReceiveBuffer`` holds the read side so each transport only has to feed bytes, EOF or an error
and be told how much the application consumed (to advance its flow-control window).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

from .address import Alternative, parse_alternative
from .errors import Code, ConnectionClosed, StreamError, UnsupportedError

DEFAULT_READ_SIZE = 65536
#: seconds a graceful ``Connection.close()`` waits for written data to be delivered by default
CLOSE_TIMEOUT = 10.0


def finished_future() -> asyncio.Future[None]:
    """An already-done future: what ``abort`` returns when nothing is left to wait for."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def fresh[E: BaseException](error: E) -> E:
    """A copy of a stored error, to raise. Raising the stored object itself would attach each
    raiser's traceback (and chain) to it, and those frames (holding the connection, the stream,
    the data being written) would live as long as the error is kept and pile up with every raise.
    """
    clone = type(error).__new__(type(error))
    clone.args = error.args
    clone.__dict__.update(error.__dict__)
    return clone


def task_future(awaitable: Awaitable[None]) -> asyncio.Future[None]:
    """Run ``awaitable`` in the background; the returned future may be awaited or ignored
    (its failure is retrieved, so an ignored one never logs)."""
    future = asyncio.ensure_future(awaitable)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


@dataclass(frozen=True)
class RemoteIdentity:
    """Who is on the other end, as far as the chain proved it.

    ``public_key`` is the Ed25519 key an shs peer authenticated with; ``certhash`` is the
    pinned certificate hash of a KPS server; ``host_key`` is the X25519 static key of a Link
    host (its address is derived from the register key, not this). Any may be None
    (``noauth``, a KPS or Link client seen from the server).
    """

    public_key: bytes | None = None
    certhash: str | None = None
    host_key: bytes | None = None

    @property
    def shs_id(self) -> str | None:
        import base64

        return base64.b64encode(self.public_key).decode() if self.public_key else None

    def __str__(self) -> str:
        if self.public_key is not None:
            return f"@{self.shs_id}.ed25519"
        if self.certhash is not None:
            return self.certhash
        if self.host_key is not None:
            import base64

            return "link host " + base64.urlsafe_b64encode(self.host_key).decode().rstrip("=")
        return "anonymous"


def wake_all(waiters: Iterable[asyncio.Future[None]]) -> None:
    """Resolve every waiter that still waits (one cancelled meanwhile is skipped)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


async def read_exactly(read: Callable[[int], Awaitable[bytes]], n: int) -> bytes:
    """Exactly ``n`` bytes from ``read``; ``asyncio.IncompleteReadError`` if EOF comes first.

    The one loop behind every ``readexactly`` (receive buffers, streams, pipes)."""
    if n < 0:
        raise ValueError("readexactly needs n >= 0")
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = await read(n - got)
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(parts), n)
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class ReceiveBuffer:
    """Bytes received on one stream, with the end state; wakes readers.

    ``on_consumed(n)`` is called after the application took ``n`` bytes, which is when a
    transport may grant the peer more credit (windows advance only as the application reads).
    """

    def __init__(self, on_consumed: Callable[[int], None] | None = None) -> None:
        self._chunks: deque[memoryview | bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_consumed = on_consumed

    # -- fed by the transport -----------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def at_eof(self) -> bool:
        return self._eof and self._size == 0

    @property
    def ended(self) -> bool:
        return self._eof or self._error is not None

    def feed(self, data: bytes) -> None:
        if self._eof or self._error is not None or not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._wake()

    def feed_eof(self) -> None:
        if self._error is None:
            self._eof = True
        self._wake()

    def fail(self, error: BaseException, *, discard: bool = True) -> None:
        """End the read side with an error; buffered bytes are dropped (and count as consumed).

        Without ``discard`` (the connection ended under a stream) a FIN already received
        stands: the reader gets the rest of the bytes and then EOF, as the peer sent them.
        """
        if self._error is not None or (self._eof and (self._size == 0 or not discard)):
            return
        self._error = error
        if discard and self._size:
            dropped = self._size
            self._chunks.clear()
            self._size = 0
            if self._on_consumed is not None:
                self._on_consumed(dropped)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the application --------------------------------------------------------------
    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _take(self, n: int) -> bytes:
        out: list[bytes] = []
        want = n
        while want > 0 and self._chunks:
            chunk = self._chunks[0]
            if len(chunk) <= want:
                self._chunks.popleft()
                out.append(bytes(chunk))
                want -= len(chunk)
            else:
                view = memoryview(chunk)
                out.append(bytes(view[:want]))
                self._chunks[0] = view[want:]
                want = 0
        data = out[0] if len(out) == 1 else b"".join(out)
        self._size -= len(data)
        if self._on_consumed is not None and data:
            self._on_consumed(len(data))
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (any amount if n < 0); ``b""`` only at EOF."""
        if self._waiter is not None:
            raise RuntimeError("read() called while another read is waiting on this stream")
        while self._size == 0:
            if self._error is not None:
                raise fresh(self._error)
            if self._eof or n == 0:
                return b""
            await self._wait()
        return self._take(self._size if n < 0 else min(n, self._size))

    async def readexactly(self, n: int) -> bytes:
        return await read_exactly(self.read, n)


class Stream(ABC):
    """A reliable, ordered byte stream with QUIC's lifecycle."""

    #: transport-specific stream number (QUIC id, yamux id, 0 for a single-stream chain)
    id: int = 0

    @abstractmethod
    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes; ``b""`` iff the peer sent FIN; raises ``StreamError`` otherwise."""

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if FIN comes first."""
        return await read_exactly(self.read, n)

    async def read_all(self, limit: int = 1 << 30) -> bytes:
        """Everything until FIN (at most ``limit`` bytes, else ``StreamError(too-large)``)."""
        parts: list[bytes] = []
        got = 0
        while True:
            chunk = await self.read()
            if not chunk:
                return b"".join(parts)
            got += len(chunk)
            if got > limit:
                raise StreamError(Code.TOO_LARGE, f"more than {limit} bytes before FIN")
            parts.append(chunk)

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Send bytes, waiting while the peer has granted no credit."""

    @abstractmethod
    async def close_write(self) -> None:
        """Send FIN: the peer reads EOF after the bytes already written."""

    @abstractmethod
    def reset(self, code: int = Code.RESET) -> None:
        """Abandon the sending half; the peer's reads fail with ``code``."""

    @abstractmethod
    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        """Ask the peer to stop; its writes fail and it resets with ``code``."""

    async def close(self, code: int | None = None) -> None:
        """End both halves: FIN (or RESET with ``code``) and STOP_SENDING (``code`` or closed)."""
        self.stop_sending(Code.CLOSED if code is None else code)
        if code is None:
            try:
                await self.close_write()
            except StreamError:
                pass
        else:
            self.reset(code)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close(None if et is None else Code.CANCELLED)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.read()
            if not chunk:
                return
            yield chunk


async def until_closed[T](accept: Callable[[], Awaitable[T]]) -> AsyncIterator[T]:
    """What ``accept()`` gives, one after another, until it raises ``ConnectionClosed``: the
    ``async for`` of a connection's streams and of a server's connections."""
    while True:
        try:
            yield await accept()
        except ConnectionClosed:
            return


#: what a connection's address may be set from: parsed, canonical text (parsed when first read),
#: or None for none
AddressLike = Alternative | str | None


class Connection(ABC):
    """A secure connection to one peer, carrying streams (and datagrams where it can)."""

    remote: RemoteIdentity = RemoteIdentity()
    #: what ``address`` was set to; text is parsed on first read (most connections are never
    #: asked, and a dial should not pay for a parse it does not need)
    _address: Alternative | str | None = None

    @property
    def address(self) -> Alternative | None:
        """The alternative this connection was reached on, parsed: a dialer's is the one it
        dialed (secrets redacted), a server's names the peer's transport address and what each
        transform proved (``net:203.0.113.5:41234~shs:KEY``). ``str()`` gives the canonical
        text. None for a connection made without an address (a memory pair)."""
        value = self._address
        if isinstance(value, str):
            value = self._address = parse_alternative(value) if value else None
        return value

    @address.setter
    def address(self, value: AddressLike) -> None:
        self._address = value

    @abstractmethod
    async def open_stream(self) -> Stream:
        """Open a new outgoing stream (waits while the peer's stream limit is reached)."""

    @abstractmethod
    async def accept_stream(self) -> Stream:
        """The next stream the peer opened; raises ``ConnectionClosed`` when the connection ends."""

    #: seconds a graceful ``close`` waits for written data to be delivered before it aborts
    close_timeout: float = CLOSE_TIMEOUT

    @abstractmethod
    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Graceful close with an application code (0 clean); the peer sees the code where it can.

        Everything written before the call is delivered first: with code 0 every stream still
        open for writing gets FIN after its bytes (the peer reads them, then EOF); with another
        code such streams end with that code after their bytes. A write still waiting when
        ``close`` is called is failed and its stream reset, so a truncated stream never reads
        as a clean EOF. Streams the peer is still sending on end: its writes fail with
        ``closed`` (or ``code``). Waiting is bounded by ``close_timeout``; after it (or if the
        caller cancels) the connection is aborted. Returns at once when nothing is queued.
        """

    @abstractmethod
    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        """Tear down now: queued data is dropped, the peer sees an error (``code`` where the
        chain carries codes), never a clean EOF. Acts before returning; the result may be
        awaited to wait until the connection's resources are released."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once the connection has ended, by either side."""

    @property
    def close_error(self) -> ConnectionClosed | None:
        """Why the connection ended (None while open)."""
        return None

    async def wait_closed(self) -> ConnectionClosed:
        """Wait until the connection ends; returns why."""
        raise UnsupportedError(f"{type(self).__name__} does not report its end")

    # -- datagrams: unsupported unless a transport overrides --------------------------------
    @property
    def max_datagram_size(self) -> int | None:
        """Largest datagram payload this connection can send now; None if it has no datagrams."""
        return None

    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable datagram; ``DatagramTooLarge`` if it does not fit."""
        raise UnsupportedError(f"{self.transport_name} connections have no datagrams")

    async def receive_datagram(self) -> bytes:
        """The oldest queued datagram (the queue is bounded and drops the oldest)."""
        raise UnsupportedError(f"{self.transport_name} connections have no datagrams")

    @property
    def transport_name(self) -> str:
        address = self.address
        return address.transport.name if address is not None else type(self).__name__

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close(Code.NONE if et is None else Code.CANCELLED)

    def __aiter__(self) -> AsyncIterator[Stream]:
        return until_closed(self.accept_stream)


class DatagramQueue:
    """A bounded receive queue of datagrams that drops the oldest when full."""

    def __init__(self, limit: int = 256) -> None:
        self._items: deque[bytes] = deque(maxlen=limit)
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.dropped = 0

    def push(self, data: bytes) -> None:
        if self._items.maxlen is not None and len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(data)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        self._error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> bytes:
        while not self._items:
            if self._error is not None:
                raise fresh(self._error)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()
