"""The asyncio shell around ``StoreCore``: runs its puts and gets against a backend.

One task drives the core: it starts the operations ``poll`` returns (each as its own task, so
puts and gets are pipelined), feeds their outcomes back, hands received bytes to a
``ReceiveBuffer`` and sleeps until the core's next deadline or the next outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable

from ..errors import Code, ConnectionClosed, StreamError, UnsupportedError
from ..stream import Connection, ReceiveBuffer, RemoteIdentity, Stream, task_future
from .backends import StoreBackend, StoreFull, StoreRefused, ValueTooLarge
from .capability import SIGNATURE_SIZE, CapabilityError, FrameSigner
from .core import StoreCore
from .ops import (
    DataReceived,
    EndReceived,
    FrameRejected,
    GetOp,
    Op,
    Purpose,
    PutOp,
    ReadFailed,
    StoreTrouble,
    WriteFailed,
)
from .params import Mode, StoreParams
from .persist import open_state, seal_state
from .schedule import Role

log = logging.getLogger("keywire.store")

#: a put or a read-back that takes longer than this counts as failed (and is retried)
OP_TIMEOUT = 15.0
#: a store that refuses every put as full for this long fails the stream (entries expire, so
#: a short spell is waited out; a full store is otherwise a silent stall)
FULL_GRACE = 10.0
#: how long an abort's last frames (Reset and StopSending, so the peer learns) may take; they
#: are put in the background, so ``abort`` itself returns at once
LAST_WORDS_TIMEOUT = 1.0


class StoreStream(Stream):
    """A reliable byte stream over a key-value store; see ``keywire.store.core``."""

    def __init__(self, core: StoreCore, backend: StoreBackend) -> None:
        # a store taking signed puts holds each frame as signature || frame (capability.py)
        signed = SIGNATURE_SIZE if backend.signed else 0
        if core.params.value_size + signed > backend.max_value:
            raise ValueError(
                f"value size {core.params.value_size}{f' + {signed}' if signed else ''} "
                f"exceeds the limit of {backend.description} ({backend.max_value} bytes)"
            )
        self._core = core
        self._backend = backend
        self._signer = FrameSigner(core.secret, core.role) if backend.signed else None
        self._wake = asyncio.Event()
        self._recv = ReceiveBuffer(on_consumed=self._consumed)
        self._waiters: list[asyncio.Future[None]] = []
        self._ops: dict[asyncio.Task[None], Op] = {}
        self._write_error: StreamError | None = None
        self._stopped: ConnectionClosed | None = None
        self._finished = asyncio.Event()
        self._writing = False
        self._full_since: float | None = None
        self._last_words: asyncio.Task[None] | None = None
        #: the latest rejected frames and store troubles, for diagnostics
        self.rejections: deque[FrameRejected] = deque(maxlen=64)
        self.troubles: deque[StoreTrouble] = deque(maxlen=64)
        self._runner = asyncio.get_running_loop().create_task(self._run())

    # -- construction ------------------------------------------------------------------------
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
        return cls(StoreCore(secret, role, params or StoreParams(), mode), backend)

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
        stream = cls(core, backend)
        try:
            async with asyncio.timeout(timeout):
                while core.recovering and core.failed is None:
                    await stream._progress()
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
        return seal_state(self._core.snapshot(), key)

    # -- state -------------------------------------------------------------------------------
    @property
    def core(self) -> StoreCore:
        return self._core

    @property
    def bytes_written(self) -> int:
        """Bytes the application has handed to this stream since it began (across restores)."""
        return self._core.bytes_written

    @property
    def bytes_read(self) -> int:
        """Bytes the application has read since the stream began (across restores)."""
        return self._core.bytes_read

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def _consumed(self, n: int) -> None:
        self._core.consumed(n)
        self._wake.set()  # gets may have paused on a full read buffer

    # -- Stream contract ---------------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        return await self._recv.read(n)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        self._writing = True  # a graceful close must not FIN a half-taken write
        try:
            while view:
                self._check_write()
                taken = self._core.write(view)
                if taken:
                    view = view[taken:]
                    self._wake.set()
                if view:
                    await self._progress()
        finally:
            self._writing = False

    def _check_write(self) -> None:
        if self._write_error is not None:
            raise self._write_error
        if self._stopped is not None:
            raise StreamError(Code.CLOSED, "stream is stopped")

    async def close_write(self) -> None:
        if self._write_error is not None or self._stopped is not None:
            return
        self._core.close_write()
        self._wake.set()

    def reset(self, code: int = Code.RESET) -> None:
        self._core.reset(code)
        self._wake.set()

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        """Reads fail with ``code`` from now; the peer is sent a StopSending (its writes fail
        and it resets with ``code``) unless its direction already ended."""
        self._core.stop_sending(code)
        self._pump()
        self._wake.set()

    async def sync(self, acked: bool = False) -> None:
        """Wait until every byte written is in the store (``acked``: acknowledged by the peer,
        or for a multicast writer, read back from the store)."""
        while not (self._core.acked if acked else self._core.flushed):
            if self._core.failed is not None:
                raise self._core.failed
            if self._stopped is not None:
                raise StreamError(Code.CLOSED, "stream stopped before it was synced")
            await self._progress()

    async def wait_finished(self) -> None:
        """Both directions ended and everything is confirmed (the stream then stops)."""
        await self._finished.wait()
        if self._core.failed is not None:
            raise self._core.failed

    async def wait_peer(self) -> None:
        """Wait until the first frame of the peer has been read."""
        while not self._core.heard_peer:
            if self._core.failed is not None:
                raise self._core.failed
            if self._stopped is not None or self._finished.is_set():
                raise StreamError(Code.CLOSED, "stream stopped before the peer was heard")
            await self._progress()

    async def linger(self, timeout: float) -> bool:
        """Wait until nothing of ours is unconfirmed (our data and our acks); True if so."""
        try:
            async with asyncio.timeout(timeout):
                while not self._core.quiescent and self._stopped is None:
                    if self._core.failed is not None:
                        return False
                    await self._progress()
        except TimeoutError:
            return False
        return self._core.quiescent

    def goodbye(self, code: int) -> None:
        """Close with a code: Reset(code) after what was written, and a StopSending(code) the
        peer hears even after its own End, so it finishes without our acks."""
        self._core.goodbye(code)
        self._pump()
        self._wake.set()

    async def abort(self, code: int = Code.CANCELLED, *, notify: bool = False) -> None:
        """Stop at once: cancel every store operation (unconfirmed frames stay unconfirmed).
        With ``notify``, put a last Reset(code) and StopSending(code) in the background (best
        effort, at most ``LAST_WORDS_TIMEOUT``), so the peer learns; without it (a simulated
        crash, a session nobody joined) nothing more is written."""
        first = self._stopped is None
        if self._stopped is None:
            self._stopped = ConnectionClosed(code, "stream stopped")
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        await self._cancel_ops()
        if notify and first:
            ops = self._core.last_words(code, asyncio.get_running_loop().time())
            if ops:
                self._last_words = asyncio.get_running_loop().create_task(self._say(ops))
        error = StreamError(code, "stream stopped")
        self._recv.fail(error, discard=False)
        if self._write_error is None:
            self._write_error = error
        self._finished.set()
        self._notify()

    async def _say(self, ops: list[PutOp]) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LAST_WORDS_TIMEOUT):
                results = await asyncio.gather(
                    *(self._put(op) for op in ops), return_exceptions=True
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    log.info(
                        "store stream: %d of the last %d frames not put: %r",
                        len(failed),
                        len(ops),
                        failed[0],
                    )
                return
        log.info("store stream: the last frames were not put in %g s", LAST_WORDS_TIMEOUT)

    async def wait_last_words(self) -> None:
        """Wait until an abort's last frames are put or given up (before closing the store)."""
        if self._last_words is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._last_words)

    # -- engine ------------------------------------------------------------------------------
    async def _progress(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _pump(self) -> None:
        for event in self._core.events():
            if isinstance(event, DataReceived):
                self._recv.feed(event.data)
            elif isinstance(event, EndReceived):
                self._recv.feed_eof()
            elif isinstance(event, ReadFailed):
                self._recv.fail(event.error, discard=event.discard)
            elif isinstance(event, WriteFailed):
                if self._write_error is None:
                    self._write_error = event.error
            elif isinstance(event, FrameRejected):
                self.rejections.append(event)
                log.warning("store stream: rejected frame %d: %s", event.index, event.reason)
            elif isinstance(event, StoreTrouble):
                self.troubles.append(event)
                log.info("store stream: %s failed: %s", event.what, event.reason)
        self._notify()

    async def _run(self) -> None:
        try:
            await self._drive()
        except Exception as exc:  # a bug must end the stream visibly, not hang it
            log.exception("store stream engine failed")
            self._core.fail(StreamError(Code.INTERNAL_ERROR, f"store stream engine: {exc!r}"))
        await self._cancel_ops()
        self._pump()
        self._finished.set()
        self._notify()

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        core = self._core
        while True:
            self._wake.clear()
            now = loop.time()
            for op in core.poll(now):
                task = loop.create_task(self._execute(op))
                self._ops[task] = op
                task.add_done_callback(self._op_finished)
            self._pump()
            if core.finished:
                break
            deadline = core.next_deadline()
            if deadline is None:
                await self._wake.wait()
            else:
                delay = deadline - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()

    def _op_finished(self, task: asyncio.Task[None]) -> None:
        self._ops.pop(task, None)

    async def _cancel_ops(self) -> None:
        tasks = list(self._ops)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _put(self, op: PutOp) -> None:
        if self._signer is None:
            await self._backend.put(op.address, op.value)
        else:
            await self._backend.put(*self._signer.put(op.index, op.value))

    async def _get(self, op: GetOp) -> bytes | None:
        if self._signer is None:
            return await self._backend.get(op.address, op.wait)
        peer = op.purpose is Purpose.READ
        body = await self._backend.get(self._signer.get_address(op.index, peer), op.wait)
        if body is None:
            return None
        try:
            return self._signer.open(op.index, peer, body)
        except CapabilityError as exc:  # the core rejects it as a frame that does not open
            log.warning("store stream: frame %d: %s", op.index, exc)
            return body

    async def _execute(self, op: Op) -> None:
        loop = asyncio.get_running_loop()
        try:
            if isinstance(op, PutOp):
                async with asyncio.timeout(OP_TIMEOUT):
                    await self._put(op)
                self._full_since = None
                self._core.put_done(op, None, loop.time())
            else:
                assert isinstance(op, GetOp)
                async with asyncio.timeout(op.wait + OP_TIMEOUT):
                    value = await self._get(op)
                self._core.get_done(op, value, loop.time())
        except asyncio.CancelledError:
            raise
        except ValueTooLarge as exc:  # retrying cannot help
            self._core.fail(StreamError(Code.TOO_LARGE, f"{self._backend.description}: {exc}"))
        except StoreRefused as exc:  # nor can it against a wrong token or certificate
            self._core.fail(StreamError(exc.code, str(exc)))
        except StoreFull as exc:
            now = loop.time()
            if self._full_since is None:
                self._full_since = now
            if now - self._full_since >= FULL_GRACE:
                self._core.fail(StreamError(Code.QUEUE_FULL, f"{exc} (for {FULL_GRACE:g} s)"))
            else:
                assert isinstance(op, PutOp)
                self._core.put_done(op, str(exc), now)
        except Exception as exc:  # every other store failure is retried by the core
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(op, PutOp):
                self._core.put_done(op, reason, loop.time())
            else:
                self._core.get_failed(op, reason, loop.time())
        self._wake.set()


class OneStreamConnection(Connection):
    """A connection that carries exactly one stream (moved here from ``keywire.pipe``: the
    store is its last user until it runs on ``keywire.shell.OneStreamConnection``).

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


class StoreConnection(OneStreamConnection):
    """A connection with exactly one store stream (no multiplexing over a store)."""

    _unnamed = "a store stream"
    _ended_text = "store stream ended"

    def __init__(
        self,
        stream: StoreStream,
        address: str = "",
        *,
        linger: float = 30.0,
        owns_backend: StoreBackend | None = None,
    ) -> None:
        super().__init__(stream, stream._finished, address)
        self._stream = stream
        self.remote = RemoteIdentity()
        #: ``linger`` (``store.linger``): most seconds a graceful close waits for the peer's
        #: acknowledgements
        self.close_timeout = linger
        self._backend = owns_backend
        self._aborting: asyncio.Future[None] | None = None

    @property
    def stream(self) -> StoreStream:
        return self._stream

    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Graceful: FIN and StopSending(closed), then wait (at most ``close_timeout``) until
        every frame we wrote and every ack we owe is confirmed, so nothing is lost. With a
        code: what was written, then Reset(code), and StopSending(code), which tells the peer
        to finish without us; we wait (as long) until the peer acknowledged our frames. A
        write still in progress resets the stream (``closed``, or the code)."""
        if self._closed is not None:
            return
        self._closed = ConnectionClosed(code, reason or "closed locally")
        stream = self._stream
        final = Code.CLOSED if code == Code.NONE else code
        try:
            if code == Code.NONE and not stream._writing:
                await stream.close_write()
                stream.stop_sending(Code.CLOSED)
                await stream.linger(self.close_timeout)
            else:
                if stream._writing:
                    stream.reset(final)
                stream.goodbye(final)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.close_timeout):
                        await stream.sync(acked=True)
        except asyncio.CancelledError:
            self.abort(Code.CANCELLED)
            raise
        await stream.abort(final, notify=True)
        if self._backend is not None:
            await stream.wait_last_words()
            await self._backend.close()

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        """Stop at once; a last Reset(code) and StopSending(code) are put in the background
        (best effort, bounded) so the peer learns. Await the result to wait until the
        operations are cancelled and, if we own the backend, those last puts are done and the
        backend is closed."""
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason or "aborted locally")
        if self._aborting is None:
            self._aborting = task_future(self._aborted(code))
        return self._aborting

    async def _aborted(self, code: int) -> None:
        await self._stream.abort(code, notify=True)
        if self._backend is not None:
            await self._stream.wait_last_words()
            await self._backend.close()

    def _take(self) -> Stream:
        if self._taken and self._closed is None and self._ended.is_set():
            raise self._natural_end()  # the peer ended the connection
        return super()._take()

    def _natural_end(self) -> ConnectionClosed:
        core = self._stream.core
        if core.failed is not None:
            return ConnectionClosed(core.failed.code, str(core.failed))
        if core.peer_reset_code is not None:  # the peer's close(code) or abort(code)
            return ConnectionClosed(
                core.peer_reset_code,
                f"peer ended the stream (code {core.peer_reset_code})",
                remote=True,
            )
        return ConnectionClosed(Code.NONE, "store stream ended")

    @property
    def transport_name(self) -> str:
        return "store"
