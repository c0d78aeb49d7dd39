"""The I/O half of an adapter for a core that speaks over a byte ``Pipe`` (mux, and any other
core with ``receive_data``/``data_to_send``): one reader task, one writer task, and the
shutdown that delivers the close frame before the pipe goes.

The writer sends whatever the core queued, so frames queued while a write is in flight go out
together (coalescing). ``output_full()`` tells ``send`` to grant no credit while more than
``OUTPUT_HIGH_WATER`` bytes wait for the pipe (memory stays bounded by the core's windows); the
reader pauses while answers to the peer pile up unsent (``control_backlog``), so a peer that
sends but never reads cannot grow our buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from . import events as ev
from .adapter import BaseAdapter
from .errors import Code, StreamError
from .pipe import ACK_POLL, Pipe, unacknowledged
from .stream import wake_all

if TYPE_CHECKING:
    from .shell import CoreConnection

log = logging.getLogger(__name__)

#: bytes asked of the pipe per read
READ_SIZE = 256 * 1024
#: writers wait while more than this is queued and not yet handed to the pipe
OUTPUT_HIGH_WATER = 1024 * 1024
#: the reader pauses while more than this many bytes of answers wait to be sent
CONTROL_HIGH_WATER = 64 * 1024
#: how long ``abort`` gives the close frame to reach the pipe before the pipe is torn down
ABORT_FLUSH = 0.5
#: how long a close waits for the peer's end once the peer's kernel acknowledged all we sent
PEER_END_GRACE = 1.0


class PipeCore(Protocol):
    """What ``PipeAdapter`` needs of a byte-pipe core (``keywire.core.ByteCore`` plus sizes)."""

    @property
    def pending_output(self) -> int: ...
    @property
    def control_backlog(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def receive_data(self, data: bytes, now: float) -> None: ...
    def receive_eof(self) -> None: ...
    def data_to_send(self) -> bytes: ...
    def connection_lost(self, code: int, reason: str) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


class PipeAdapter(BaseAdapter):
    """Moves a core's bytes over a ``Pipe``. Subclasses add the core's verbs and translate
    its events; they put their own shared-vocabulary events on ``self.events``."""

    #: the writer task ends whenever nothing is queued and ``transmit`` starts it again (for
    #: a core whose connection may be dropped with no task left to notice, e.g. a raw pipe
    #: after its peer's FIN)
    lazy_writer = False

    def __init__(self, pipe: Pipe, core: PipeCore) -> None:
        self.pipe = pipe
        self.core = core
        #: translated events not taken yet (``next_event`` serves these first)
        self.events: deque[ev.Event] = deque()
        self._output_ready = asyncio.Event()
        self._output_idle = asyncio.Event()
        self._output_idle.set()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._backlogged = self._pipe_dead = self._aborting = self._peer_eof = False

    def attach(self, shell: CoreConnection) -> None:
        self.shell = shell
        self.loop = loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_loop())
        self._writer = loop.create_task(self._write_loop())

    def transmit(self) -> None:
        if self.core.pending_output:
            self._wake_writer()

    def _wake_writer(self) -> None:
        self._output_idle.clear()
        self._output_ready.set()
        if self.lazy_writer and self._writer.done() and not self._aborting:
            self._writer = self.loop.create_task(self._write_loop())

    def output_full(self) -> bool:
        """True (and credit comes once the writer took the output) while too much is queued."""
        if self.core.pending_output > OUTPUT_HIGH_WATER:
            self._backlogged = True
            return True
        return False

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        self._aborting = aborting
        self._wake_drained()
        return self.loop.create_task(self._close_pipe())

    def abort_io(self) -> None:
        self._aborting = True
        self.pipe.abort()

    async def output_flushed(self) -> None:
        """The writer handed everything queued to the pipe (a raw pipe sends its FIN here)."""

    # -- tasks ----------------------------------------------------------------------------------
    def _wake_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        wake_all(waiters)

    def _failed(self, exc: BaseException) -> None:
        """The pipe broke under the reader or the writer: the core ends with its code."""
        self._pipe_dead = True
        if isinstance(exc, StreamError):
            self.core.connection_lost(exc.wire_code, f"the pipe failed: {exc}")
        else:
            self.core.connection_lost(Code.NETWORK_ERROR, f"the pipe failed: {exc!r}")
        self.shell.update()

    async def _read_loop(self) -> None:
        core = self.core
        try:
            while True:  # after the core ended: drained until the peer's end (see close)
                data = await self.pipe.read(READ_SIZE)
                if not data:
                    self._peer_eof = True
                    core.receive_eof()
                    self.shell.update()
                    return
                core.receive_data(data, self.loop.time())
                self.shell.update()
                while core.control_backlog > CONTROL_HIGH_WATER and not core.closed:
                    waiter = self.loop.create_future()
                    self._drain_waiters.append(waiter)
                    await waiter
        except (StreamError, OSError, EOFError) as exc:
            self._failed(exc)
        except Exception as exc:  # a bug must end this connection, not the server
            log.exception("pipe reader failed")
            core.close(Code.INTERNAL_ERROR, f"internal error: {exc!r}")
            self.shell.update()

    async def _write_loop(self) -> None:
        core = self.core
        try:
            while True:
                if self.lazy_writer and not self._output_ready.is_set():
                    return  # nothing queued: no task is left behind (``transmit`` restarts it)
                await self._output_ready.wait()
                self._output_ready.clear()
                data = core.data_to_send()
                self._wake_drained()
                if self._backlogged:
                    self._backlogged = False
                    self.events.append(ev.CreditAvailable())
                    self.shell.update()
                if data:
                    await self.pipe.write(data)
                if not core.pending_output:
                    await self.output_flushed()
                    self._output_idle.set()
        except (StreamError, OSError, EOFError) as exc:
            self._failed(exc)
        except Exception as exc:
            log.exception("pipe writer failed")
            self._pipe_dead = True
            core.connection_lost(Code.INTERNAL_ERROR, f"internal error: {exc!r}")
            self.shell.update()
        finally:
            self._output_idle.set()

    async def _await_peer_end(self) -> None:
        """Until the reader sees the peer's end of the pipe. A keywire peer ends its half as
        soon as it reads our close frame; a plain yamux peer may never do so, so once the
        kernel says the peer has everything (``SIOCOUTQ`` 0) the wait is cut to
        ``PEER_END_GRACE``."""
        loop = self.loop
        acked_at: float | None = None
        poll = ACK_POLL / 8
        while not self._reader.done():
            pending = unacknowledged(self.pipe)
            if pending == 0:
                acked_at = loop.time() if acked_at is None else acked_at
                if loop.time() - acked_at >= PEER_END_GRACE:
                    return
            await asyncio.wait({self._reader}, timeout=None if pending is None else poll)
            poll = min(poll * 2, ACK_POLL)

    async def _close_pipe(self) -> None:
        """After the core ended: flush what is queued (the close frame last), end our half of
        the pipe and wait for the peer's end (closing while the peer still sends makes the
        kernel answer with RST, which can destroy our last bytes at the peer), then close the
        pipe; bounded by ``close_timeout``. A pipe that cannot take the flush is aborted."""
        loop, pipe = self.loop, self.pipe
        deadline = loop.time() + (ABORT_FLUSH if self._aborting else self.shell.close_timeout)
        try:
            flushed = False
            if not self._pipe_dead:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._output_idle.wait()
                        flushed = not self._pipe_dead
            self._writer.cancel()
            if flushed and not self._aborting:
                try:
                    async with asyncio.timeout_at(deadline):
                        await pipe.close_write()
                        if not self._peer_eof:
                            await self._await_peer_end()
                except (TimeoutError, StreamError, OSError):
                    flushed = False
            self._reader.cancel()
            if not flushed or self._aborting:
                pipe.abort()
            else:
                try:
                    async with asyncio.timeout(max(1.0, deadline - loop.time())):
                        await pipe.close()
                except (TimeoutError, StreamError, OSError):
                    pipe.abort()
            for task in (self._writer, self._reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        except asyncio.CancelledError:
            pipe.abort()
            raise
        except Exception:  # never leave a failed task behind: the pipe just goes
            log.exception("pipe shutdown failed")
            pipe.abort()
