"""``StoreAdapter``: the shared shell's adapter for a store stream (``StoreCore`` + a backend).

A store stream has no bytes to move, only store operations: ``transmit`` starts the puts and
gets ``StoreCore.poll`` hands out, each as its own task (so they are pipelined), and each task
feeds its outcome back to the core and asks the shell for an update. Everything else (waiters,
the receive buffer, write backpressure, the one timer, close and abort) is the shell's
(``keywire.shell.OneStreamConnection``, via ``keywire.store.stream.StoreConnection``).

The core reports in ``keywire.events`` terms (``StreamData`` with ``fin`` for End,
``StreamReset`` for the peer's bare Reset, ``ReadsFailed`` for reads that fail while keeping what
was received (the peer's close(code), like QUIC's RESET_STREAM_AT) or for our own StopSending
reported after a restore, ``StopSendingReceived`` for its StopSending, ``ConnectionTerminated``
for a fatal error); ``next_event`` passes those on and adds the ending the shell needs when the
stream is simply over (both directions done and confirmed: ``Code.NONE`` or the code of the
peer's close; or our own close or abort). The core's two store-only events
(``keywire.store.ops``), ``FrameRejected`` and ``StoreTrouble``, are diagnostics, not stream
semantics: they are logged and kept in the ``rejections``/``troubles`` rings (``StoreStream``
shows them), so the shared vocabulary does not grow members no other shell would handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, cast

from .. import events as ev
from ..adapter import BaseAdapter, OneStreamVerbs
from ..errors import Code, StreamError
from ..stream import task_future
from .backends import StoreBackend, StoreFull, StoreRefused, ValueTooLarge
from .capability import SIGNATURE_SIZE, CapabilityError, FrameSigner
from .core import StoreCore
from .ops import Event, FrameRejected, GetOp, Op, Purpose, PutOp, StoreTrouble

if TYPE_CHECKING:
    from ..shell import CoreConnection
    from .stream import StoreConnection

log = logging.getLogger("keywire.store")

#: a put or a read-back that takes longer than this counts as failed (and is retried)
OP_TIMEOUT = 15.0
#: a store that refuses every put as full for this long fails the stream (entries expire, so
#: a short spell is waited out; a full store is otherwise a silent stall)
FULL_GRACE = 10.0
#: how long an abort's last frames (Reset and StopSending, so the peer learns) may take; they
#: are put in the background, so ``abort`` itself returns at once
LAST_WORDS_TIMEOUT = 1.0
_MAX_CODE = 0xFFFFFFFF


class StoreAdapter(OneStreamVerbs, BaseAdapter):
    """Runs one ``StoreCore``'s operations against ``backend`` for the shell."""

    _conn: StoreConnection

    def __init__(self, core: StoreCore, backend: StoreBackend) -> None:
        # a store taking signed puts holds each frame as signature || frame (capability.py)
        signed = SIGNATURE_SIZE if backend.signed else 0
        if core.params.value_size + signed > backend.max_value:
            raise ValueError(
                f"value size {core.params.value_size}{f' + {signed}' if signed else ''} "
                f"exceeds the limit of {backend.description} ({backend.max_value} bytes)"
            )
        self.core = core
        self.backend = backend
        #: closed with the connection (after the last words) when the connection owns it
        self.owned: StoreBackend | None = None
        #: whether the ending puts the last Reset/StopSending (``StoreStream.abort`` alone: no)
        self.notify = True
        self._signer = FrameSigner(core.secret, core.role) if backend.signed else None
        self._raw: deque[Event] = deque()
        self._out: deque[ev.Event] = deque()
        self._ops: dict[asyncio.Task[None], Op] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._want_credit = False
        self._ended = False
        self._closing: tuple[int, str, bool] | None = None  # code, reason, wait for acks only
        self._full_since: float | None = None
        self.last_words: asyncio.Task[None] | None = None
        #: the latest rejected frames and store troubles, for diagnostics
        self.rejections: deque[FrameRejected] = deque(maxlen=64)
        self.troubles: deque[StoreTrouble] = deque(maxlen=64)

    def attach(self, shell: CoreConnection) -> None:
        # its own typed reference: the shell is always a ``StoreConnection`` here
        self._conn = cast("StoreConnection", shell)
        self._loop = asyncio.get_running_loop()
        # not ``update()``: the shell's stream does not exist yet (restored bytes wait for it)
        shell.update_soon()

    # -- the core's events, in the shell's terms ------------------------------------------------
    def next_event(self) -> ev.Event | None:
        out = self._out
        while not out:
            if not self._raw:
                self._raw.extend(self.core.events())
                if not self._raw:
                    self._check_credit()
                    self._check_end()
                    break
            self._translate(self._raw.popleft())
        return out.popleft() if out else None

    def _translate(self, event: Event) -> None:
        if isinstance(event, FrameRejected):
            self.rejections.append(event)
            log.warning("store stream: rejected frame %d: %s", event.index, event.reason)
        elif isinstance(event, StoreTrouble):
            self.troubles.append(event)
            log.info("store stream: %s failed: %s", event.what, event.reason)
        elif isinstance(event, ev.ConnectionTerminated):  # a fatal error
            self._end(event.code, event.reason)
        else:
            self._out.append(event)

    def _check_credit(self) -> None:
        core = self.core
        if self._want_credit and (core.write_space > 0 or core.failed is not None):
            self._want_credit = False
            self._out.append(ev.CreditAvailable(0))

    def _check_end(self) -> None:
        core = self.core
        if self._ended or not core.finished:
            return
        if core.failed is not None:
            self._end(core.failed.wire_code, str(core.failed))
        elif self._closing is not None:
            self._end(self._closing[0], self._closing[1])
        elif (code := core.peer_reset_code) is not None:  # the peer's close(code) or abort(code)
            self._end(code, f"peer ended the stream (code {code})", remote=True)
        else:
            self._end(Code.NONE, "store stream ended")

    def _end(self, code: int, reason: str, *, remote: bool = False) -> None:
        if not self._ended:
            self._ended = True
            self._out.append(ev.ConnectionTerminated(code, reason, remote))

    # -- driving --------------------------------------------------------------------------------
    def transmit(self) -> None:
        """Start the operations the core wants now."""
        if not self._ended:
            try:
                ops = self.core.poll(self._loop.time())
            except Exception as exc:  # a bug must end the stream visibly, not hang it
                log.exception("store stream engine failed")
                self.core.fail(StreamError(Code.INTERNAL_ERROR, f"store stream engine: {exc!r}"))
                ops = []
            for op in ops:
                task = self._loop.create_task(self._execute(op))
                self._ops[task] = op
                task.add_done_callback(self._op_finished)
        self._wake_progress()

    def get_timer(self) -> float | None:
        return None if self._ended else self.core.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Nothing to do here: the update that follows polls the core, which builds what is due."""

    async def progress(self) -> None:
        """Wait for the next update (an outcome fed, a deadline, a local verb)."""
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake_progress(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- the shell's verbs ----------------------------------------------------------------------
    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        if end:
            self.core.close_write()
            return 0
        taken = self.core.write(data)
        if not taken:
            self._want_credit = True
        return taken

    def reset(self, stream_id: int, code: int) -> None:
        self.core.reset(_code(code))

    def stop_sending(self, stream_id: int, code: int) -> None:
        self.core.stop_sending(_code(code))

    def consumed(self, stream_id: int, n: int) -> None:
        self.core.consumed(n)
        self._conn.update_soon()  # gets may have paused on a full read buffer

    def begin_close(self, code: int, reason: str, *, writing: bool) -> None:
        """A graceful ``close(code)`` starts (``writing``: a write was in progress, so the shell
        resets the stream). Without a code and a write: StopSending(closed) beside the FIN, and
        the close waits until nothing of ours is unconfirmed. Otherwise our direction ends with
        Reset(code) after what was written plus a StopSending(code) the peer hears even after
        its End, and the close waits for the peer's acks only."""
        final = code or Code.CLOSED
        self._closing = (code, reason or "closed locally", code != Code.NONE or writing)
        if self._closing[2]:
            self.core.goodbye(final)
        else:
            self.core.stop_sending(Code.CLOSED)

    def delivered(self) -> bool:
        core = self.core
        if self._ended or core.failed is not None or core.finished:
            return True
        if self._closing is not None and self._closing[2]:
            return core.acked
        return core.quiescent

    def close(self, code: int, reason: str) -> None:
        self._end(code, reason or "closed locally")

    def abort(self, code: int, reason: str) -> None:
        self._end(code, reason or "aborted locally")

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        """Cancel every operation (unconfirmed frames stay unconfirmed); after our own close or
        abort, put the last Reset and StopSending in the background (``notify``), then close
        the backend if the connection owns it."""
        self._ended = True
        tasks = list(self._ops)
        for task in tasks:
            task.cancel()
        if self.notify and not event.remote:
            ops = self.core.last_words(event.code or Code.CLOSED, self._loop.time())
            if ops:
                self.last_words = self._loop.create_task(self._say(ops))
        self._wake_progress()
        return task_future(self._release(tasks))

    async def _release(self, tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.owned is not None:
            await self.wait_last_words()
            await self.owned.close()

    async def wait_last_words(self) -> None:
        """Wait until the last frames are put or given up (before closing the store)."""
        if self.last_words is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.last_words)

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

    # -- store operations -----------------------------------------------------------------------
    def _op_finished(self, task: asyncio.Task[None]) -> None:
        self._ops.pop(task, None)

    async def _put(self, op: PutOp) -> None:
        if self._signer is None:
            await self.backend.put(op.address, op.value)
        else:
            await self.backend.put(*self._signer.put(op.index, op.value))

    async def _get(self, op: GetOp) -> bytes | None:
        if self._signer is None:
            return await self.backend.get(op.address, op.wait)
        peer = op.purpose is Purpose.READ
        body = await self.backend.get(self._signer.get_address(op.index, peer), op.wait)
        if body is None:
            return None
        try:
            return self._signer.open(op.index, peer, body)
        except CapabilityError as exc:  # the core rejects it as a frame that does not open
            log.warning("store stream: frame %d: %s", op.index, exc)
            return body

    async def _execute(self, op: Op) -> None:
        loop = self._loop
        core = self.core
        try:
            if isinstance(op, PutOp):
                async with asyncio.timeout(OP_TIMEOUT):
                    await self._put(op)
                self._full_since = None
                core.put_done(op, None, loop.time())
            else:
                async with asyncio.timeout(op.wait + OP_TIMEOUT):
                    value = await self._get(op)
                core.get_done(op, value, loop.time())
        except asyncio.CancelledError:
            raise
        except ValueTooLarge as exc:  # retrying cannot help
            core.fail(StreamError(Code.TOO_LARGE, f"{self.backend.description}: {exc}"))
        except StoreRefused as exc:  # nor can it against a wrong token or certificate
            core.fail(StreamError(exc.code, str(exc)))
        except StoreFull as exc:
            now = loop.time()
            if self._full_since is None:
                self._full_since = now
            if now - self._full_since >= FULL_GRACE:
                core.fail(StreamError(Code.QUEUE_FULL, f"{exc} (for {FULL_GRACE:g} s)"))
            else:
                assert isinstance(op, PutOp)
                core.put_done(op, str(exc), now)
        except Exception as exc:  # every other store failure is retried by the core
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(op, PutOp):
                core.put_done(op, reason, loop.time())
            else:
                core.get_failed(op, reason, loop.time())
        self._conn.update_soon()  # outcomes in one loop iteration share one poll


def _code(code: int) -> int:
    """A stream code the store's frames carry (4 bytes); ``ValueError`` for any other."""
    if not 0 <= code <= _MAX_CODE:
        raise ValueError(f"a store stream carries codes 0..{_MAX_CODE}, not {code}")
    return code
