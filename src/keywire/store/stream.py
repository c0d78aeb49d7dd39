"""Store streams on the shared shell: ``StoreStream`` and ``StoreConnection``.

A store stream is a ``keywire.shell.OneStreamConnection`` whose adapter
(``keywire.store.adapter.StoreAdapter``) runs ``StoreCore``'s puts and gets against a backend;
``StoreStream`` is its one stream plus the store's own verbs (``save``/``restore``, ``sync``,
``linger``, ``goodbye``, ...). Every stream is born with its connection, so the bare
``StoreStream.open`` API and ``stream.connection`` are the same object.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from ..corestream import CoreStream
from ..errors import Code, StreamError
from ..shell import OneStreamConnection
from ..stream import AddressLike
from .adapter import StoreAdapter
from .backends import StoreBackend
from .core import StoreCore
from .ops import FrameRejected, StoreTrouble
from .params import Mode, StoreParams
from .persist import open_state, seal_state
from .schedule import Role

__all__ = ["StoreConnection", "StoreStream"]


class StoreStream(CoreStream):
    """A reliable byte stream over a key-value store; see ``keywire.store.core``."""

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        backend: StoreBackend,
        secret: bytes,
        role: Role,
        *,
        params: StoreParams | None = None,
        mode: Mode = Mode.DUPLEX,
    ) -> StoreStream:
        """Start one end of a stream (call from a running event loop)."""
        core = StoreCore(secret, role, params or StoreParams(), mode)
        return StoreConnection(StoreAdapter(core, backend)).stream

    @classmethod
    async def restore(
        cls,
        backend: StoreBackend,
        blob: bytes,
        key: bytes,
        *,
        params: StoreParams | None = None,
        timeout: float = 30.0,
    ) -> StoreStream:
        """Resume from ``save()``; returns once the frames put after that save are found, so
        ``bytes_written`` says where the application should continue writing from."""
        now = asyncio.get_running_loop().time()
        core = StoreCore.from_snapshot(open_state(blob, key), params, now)
        stream = StoreConnection(StoreAdapter(core, backend)).stream
        try:
            async with asyncio.timeout(timeout):
                while core.recovering and core.failed is None:
                    await stream._conn.next_update()
        except TimeoutError:
            await stream.abort()
            raise TimeoutError(
                f"restoring the stream: the store did not answer in {timeout:g} s"
            ) from None
        if core.failed is not None:
            await stream.abort()
            raise core.failed
        return stream

    def save(self, key: bytes) -> bytes:
        """The whole state, sealed under ``key`` (32 bytes); see ``restore``."""
        return seal_state(self.core.snapshot(), key)

    # -- state ----------------------------------------------------------------------------------
    @property
    def connection(self) -> StoreConnection:
        return cast(StoreConnection, self._conn)

    @property
    def _store(self) -> StoreAdapter:
        return self.connection._store

    @property
    def core(self) -> StoreCore:
        return self._store.core

    @property
    def rejections(self) -> deque[FrameRejected]:
        """The latest frames read from the store that were not valid (diagnostics)."""
        return self._store.life.rejections

    @property
    def troubles(self) -> deque[StoreTrouble]:
        """The latest puts and gets the store failed (retried; diagnostics)."""
        return self._store.life.troubles

    @property
    def bytes_written(self) -> int:
        """Bytes the application has handed to this stream since it began (across restores)."""
        return self.core.bytes_written

    @property
    def bytes_read(self) -> int:
        """Bytes the application has read since the stream began (across restores)."""
        return self.core.bytes_read

    @property
    def finished(self) -> bool:
        """The stream (so its connection) is over: finished, failed, closed or aborted."""
        return self._conn.closed

    async def write(self, data: bytes) -> None:
        if self.core.multicast_reader:  # say so even once the stream is over
            raise StreamError(Code.UNSUPPORTED, "a multicast reader cannot write")
        await super().write(data)

    # -- the store's verbs ----------------------------------------------------------------------
    async def sync(self, acked: bool = False) -> None:
        """Wait until every byte written is in the store (``acked``: acknowledged by the peer,
        or for a multicast writer, read back from the store)."""
        core = self.core
        while not (core.acked if acked else core.flushed):
            if core.failed is not None:
                raise core.failed
            if self.finished:
                raise StreamError(Code.CLOSED, "stream stopped before it was synced")
            await self._conn.next_update()

    async def wait_finished(self) -> None:
        """Both directions ended and everything is confirmed (the stream then stops)."""
        await self._conn.wait_closed()
        if self.core.failed is not None:
            raise self.core.failed

    async def wait_peer(self) -> None:
        """Wait until the first frame of the peer has been read."""
        core = self.core
        while not core.heard_peer:
            if core.failed is not None:
                raise core.failed
            if self.finished:
                raise StreamError(Code.CLOSED, "stream stopped before the peer was heard")
            await self._conn.next_update()

    async def linger(self, timeout: float) -> bool:
        """Wait until nothing of ours is unconfirmed (our data and our acks); True if so."""
        core = self.core
        try:
            async with asyncio.timeout(timeout):
                while not core.quiescent and not self.finished:
                    if core.failed is not None:
                        return False
                    await self._conn.next_update()
        except TimeoutError:
            return False
        return core.quiescent

    def goodbye(self, code: int) -> None:
        """Close with a code: Reset(code) after what was written, and a StopSending(code) the
        peer hears even after its End, so it finishes without our acks."""
        if not self.finished:
            self.core.goodbye(code)
            self._conn.update_soon()

    async def abort(self, code: int = Code.CANCELLED, *, notify: bool = False) -> None:
        """Stop at once: cancel every store operation (unconfirmed frames stay unconfirmed).
        With ``notify``, put a last Reset(code) and StopSending(code) in the background (best
        effort, at most ``LAST_WORDS_TIMEOUT``), so the peer learns; without it (a simulated
        crash, a session nobody joined) nothing more is written."""
        if not self.finished:
            self._store.notify = notify
        await self._conn.abort(code, "stream stopped")


class StoreConnection(OneStreamConnection):
    """A connection with exactly one store stream (no multiplexing over a store).

    Every ``StoreStream`` is born with its connection (``stream.connection``);
    ``stream.connection.named(address, linger=..., owns_backend=...)`` gives it an address for
    errors, ``linger`` (``store.linger``, the most seconds a graceful close waits for the
    peer's acknowledgements) and the backend it closes when it ends."""

    stream_class = StoreStream
    unnamed = "a store stream"

    def __init__(self, adapter: StoreAdapter) -> None:
        self._store = adapter
        super().__init__(adapter)
        self.close_timeout = 30.0

    def named(
        self,
        address: AddressLike = None,
        *,
        linger: float = 30.0,
        owns_backend: StoreBackend | None = None,
    ) -> StoreConnection:
        """Set the address, the close bound and the owned backend; returns this connection."""
        self.address = address
        self.close_timeout = linger
        self._store.ops.owned = owns_backend
        return self

    @property
    def stream(self) -> StoreStream:
        return cast(StoreStream, self._one)

    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Graceful: FIN and StopSending(closed), then wait (at most ``close_timeout``) until
        every frame we wrote and every ack we owe is confirmed, so nothing is lost. With a
        code: what was written, then Reset(code), and StopSending(code), which tells the peer
        to finish without us; we wait (as long) until the peer acknowledged our frames. A
        write still in progress resets the stream (``closed``, or the code)."""
        if self._error is None and self._store.life.closing is None:
            writing = self._one._write_lock.locked()
            if writing and code != Code.NONE:
                self._one.reset(code)  # the shell would reset it with ``closed``
            self._store.life.begin_close(code, reason, writing=writing)
        await super().close(code, reason)

    @property
    def transport_name(self) -> str:
        return "store"
