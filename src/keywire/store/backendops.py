"""``BackendOps``: a store stream's puts and gets against its backend, as pipelined tasks.

``StoreCore.poll`` hands out operations; the adapter (``keywire.store.adapter``) passes them to
``start``, which runs each as its own task so they overlap. Each outcome is fed back to the core
and then ``on_outcome`` is called (the adapter asks the shell for an update). How failures are
taken: an operation slower than ``OP_TIMEOUT`` or any store error is reported to the core, which
retries it with its backoff; a store refusing puts as full is waited out for ``FULL_GRACE``; a
value too large or a refusal (wrong token or certificate) fails the stream, since retrying
cannot help. A signed store's frames are signed and opened here (``capability``).

At the ending, ``stop`` cancels every operation, puts the last frames (Reset, StopSending) in
the background for at most ``LAST_WORDS_TIMEOUT``, then closes the backend if the connection
owns it (``owned``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..errors import Code, StreamError
from ..stream import task_future
from .backends import StoreBackend, StoreFull, StoreRefused, ValueTooLarge
from .capability import SIGNATURE_SIZE, CapabilityError, FrameSigner
from .core import StoreCore
from .ops import GetOp, Op, Purpose, PutOp

__all__ = ["FULL_GRACE", "LAST_WORDS_TIMEOUT", "OP_TIMEOUT", "BackendOps"]

log = logging.getLogger("keywire.store")

#: a put or a read-back that takes longer than this counts as failed (and is retried)
OP_TIMEOUT = 15.0
#: a store that refuses every put as full for this long fails the stream (entries expire, so
#: a short spell is waited out; a full store is otherwise a silent stall)
FULL_GRACE = 10.0
#: how long an abort's last frames (Reset and StopSending, so the peer learns) may take; they
#: are put in the background, so ``abort`` itself returns at once
LAST_WORDS_TIMEOUT = 1.0


class BackendOps:
    """Runs ``core``'s store operations against ``backend``; see the module doc."""

    def __init__(
        self, core: StoreCore, backend: StoreBackend, on_outcome: Callable[[], None]
    ) -> None:
        # a store taking signed puts holds each frame as signature || frame (capability.py)
        signed = SIGNATURE_SIZE if backend.signed else 0
        if core.params.value_size + signed > backend.max_value:
            raise ValueError(
                f"value size {core.params.value_size}{f' + {signed}' if signed else ''} "
                f"exceeds the limit of {backend.description} ({backend.max_value} bytes)"
            )
        self.core = core
        self.backend = backend
        self._on_outcome = on_outcome
        #: closed by ``stop`` (after the last words) when the connection owns it
        self.owned: StoreBackend | None = None
        self._signer = FrameSigner(core.secret, core.role) if backend.signed else None
        if backend.read_group:
            core.receiver.group_reads()
        self._tasks: set[asyncio.Task[None]] = set()
        self._full_since: float | None = None
        self.last_words: asyncio.Task[None] | None = None

    def start(self, ops: list[Op]) -> None:
        """Start one task per operation."""
        loop = asyncio.get_running_loop()
        for op in ops:
            task = loop.create_task(self._execute(op))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def stop(self, last_words: list[PutOp]) -> Awaitable[None]:
        """Cancel every operation (unconfirmed frames stay unconfirmed) and put ``last_words``
        in the background; the result resolves once the operations are gone and an owned
        backend is closed."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if last_words:
            self.last_words = asyncio.get_running_loop().create_task(self._say(last_words))
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

    # -- one operation --------------------------------------------------------------------------
    async def _put(self, op: PutOp) -> None:
        if self._signer is None:
            await self.backend.put(op.address, op.value)
        else:
            await self.backend.put(*self._signer.put(op.index, op.value))

    async def _get(self, op: GetOp) -> bytes | None:
        peer = op.purpose is Purpose.READ
        # the peer's frames are read ahead of its puts: most of those gets wait
        get = self.backend.get_ahead if peer else self.backend.get
        if self._signer is None:
            return await get(op.address, op.wait)
        body = await get(self._signer.get_address(op.index, peer), op.wait)
        if body is None:
            return None
        try:
            return self._signer.open(op.index, peer, body)
        except CapabilityError as exc:  # the core rejects it as a frame that does not open
            log.warning("store stream: frame %d: %s", op.index, exc)
            return body

    async def _execute(self, op: Op) -> None:
        loop = asyncio.get_running_loop()
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
        self._on_outcome()  # outcomes in one loop iteration share one update
