"""A chain without ``~mux`` on the shared shell: one stream straight over a pipe.

The pipe's bytes are the stream's bytes and its half-close is the stream's FIN, so there are
no frames and no codes: a reset or a close with a code can only cut the pipe (the peer reads
network-error, or EOF where the carrier cannot tell). ``RawPipeCore`` keeps that state,
``SinglePipeAdapter`` runs it over ``PipeAdapter``'s reader and writer and adds the pipe's own
graceful close; ``SingleStreamConnection`` is the public ``OneStreamConnection``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable

from . import events as ev
from .adapter import OneStreamVerbs
from .errors import Code, StreamError
from .pipe import ACK_POLL, LINGER_AFTER_ACK, Pipe, unacknowledged
from .pipeio import CONTROL_HIGH_WATER, OUTPUT_HIGH_WATER, PipeAdapter
from .shell import CoreStream, OneStreamConnection
from .stream import AddressLike, RemoteIdentity, finished_future

__all__ = ["PipeStream", "RawPipeCore", "SinglePipeAdapter", "SingleStreamConnection"]


class RawPipeCore:
    """The state of one unframed stream: queued output, FIN, what the application has not
    read yet (``control_backlog``: the reader pauses above ``CONTROL_HIGH_WATER``, so the
    pipe's own flow control holds the peer), and the end."""

    def __init__(self) -> None:
        self.events: deque[ev.Event] = deque([ev.HandshakeCompleted()])
        self._out: deque[memoryview] = deque()
        self.pending_output = 0
        self.fin_queued = self.fin_sent = self.fin_received = self.read_stopped = False
        self.closed = False
        self.buffered = 0
        self.last_input = 0.0

    @property
    def control_backlog(self) -> int:
        return self.buffered

    def queue(self, data: memoryview) -> None:
        self._out.append(data)
        self.pending_output += len(data)

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        self.pending_output = 0
        return data

    def receive_data(self, data: bytes, now: float) -> None:
        self.last_input = now
        if not self.closed and not self.read_stopped:
            self.buffered += len(data)
            self.events.append(ev.StreamData(0, data))

    def receive_eof(self) -> None:
        self.fin_received = True
        if not self.closed and not self.read_stopped:
            self.events.append(ev.StreamData(0, b"", fin=True))
        self.check_end()

    def check_end(self) -> None:
        """Both halves over: the connection ended on its own."""
        if self.fin_sent and (self.fin_received or self.read_stopped):
            self.end(Code.NONE, "stream ended", remote=False)

    def end(self, code: int, reason: str, *, remote: bool) -> None:
        if not self.closed:
            self.closed = True
            self.events.append(ev.ConnectionTerminated(code, reason, remote))

    def connection_lost(self, code: int, reason: str) -> None:
        self.end(code, reason, remote=True)

    def close(self, code: int, reason: str) -> None:
        self.end(code, reason or "closed locally", remote=False)


class SinglePipeAdapter(OneStreamVerbs, PipeAdapter):
    """The shell's verbs on a ``RawPipeCore``; FIN is ``pipe.close_write()``."""

    core: RawPipeCore
    lazy_writer = True

    def __init__(self, pipe: Pipe) -> None:
        super().__init__(pipe, RawPipeCore())
        self._cut = False

    def next_event(self) -> ev.Event | None:
        if self.events:
            return self.events.popleft()
        return self.core.events.popleft() if self.core.events else None

    def transmit(self) -> None:
        core = self.core
        if (core.pending_output or (core.fin_queued and not core.fin_sent)) and not self._pipe_dead:
            self._wake_writer()

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        if end:
            self.core.fin_queued = True
            return 0
        if self.output_full():
            return 0
        # at most up to the high water: a large write waits for the pipe like a small one
        taken = data[: max(1, OUTPUT_HIGH_WATER - self.core.pending_output)]
        self.core.queue(taken)
        return len(taken)

    def _fail_reads(self, error: StreamError) -> None:
        """What was received and not read is lost with the pipe: reads fail at once."""
        stream = self.shell._table.get(0)
        if stream is not None:
            stream._recv.fail(error)

    def reset(self, stream_id: int, code: int) -> None:
        self._fail_reads(StreamError(code, "stream was reset"))
        self._cut = True
        self.core.end(Code.NONE, "stream ended", remote=False)

    def stop_sending(self, stream_id: int, code: int) -> None:
        self.core.read_stopped = True
        self.core.check_end()

    def consumed(self, stream_id: int, n: int) -> None:
        self.core.buffered -= n
        if self.core.buffered <= CONTROL_HIGH_WATER:
            self._wake_drained()

    def close(self, code: int, reason: str) -> None:
        self.core.close(code, reason)

    def abort(self, code: int, reason: str) -> None:
        self.core.end(code, reason or "aborted locally", remote=False)

    async def output_flushed(self) -> None:
        core = self.core
        if not core.fin_queued or core.fin_sent:
            return
        await self.pipe.close_write()
        core.fin_sent = True
        if not self.pipe.supports_half_close and not core.fin_received:
            # our FIN also ended the peer's direction: what it had not sent yet is lost, so a
            # read must fail, never end in a clean EOF
            text = (
                f"{self.pipe.peer or 'this pipe'} cannot half-close: ending our side cut the peer's"
            )
            self._fail_reads(StreamError(Code.NETWORK_ERROR, text))
            core.end(Code.NETWORK_ERROR, text, remote=False)
        core.check_end()
        self.shell.update()

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        self._wake_drained()
        if aborting or self._cut:
            self._drop()
            return finished_future()
        return self.loop.create_task(self._linger_close(finish=event.code == Code.NONE))

    def _drop(self) -> None:
        self._aborting = True
        self.pipe.abort()
        self._reader.cancel()
        self._writer.cancel()

    async def _linger_close(self, *, finish: bool) -> None:
        """Deliver what was written (FIN included), then close: wait, bounded by
        ``close_timeout``, until the peer acknowledged our last bytes or ended its side.

        Meanwhile the reader drops what the peer still sends: closing a socket with unread
        input makes the kernel answer RST, which can destroy our last bytes in the peer's
        receive buffer. Once ours are acknowledged the socket closes as soon as the peer is
        quiet, and after ``LINGER_AFTER_ACK`` even if it keeps sending. Without ``finish`` (a
        close with a code, which a pipe cannot carry) the pipe is aborted after the delivery,
        so the peer reads the bytes and then an error, never a clean EOF."""
        loop, pipe, core = self.loop, self.pipe, self.core
        deadline = loop.time() + self.shell.close_timeout
        try:
            if not self._pipe_dead:
                async with asyncio.timeout_at(deadline):
                    await self._output_idle.wait()
            if self._pipe_dead:
                self._drop()
                return
            acked_at: float | None = None
            poll = ACK_POLL / 8
            while not self._reader.done() and (now := loop.time()) < deadline:
                pending = unacknowledged(pipe)
                if pending is None and not finish:
                    # no FIN went out, so the peer's end will not come: give the last bytes
                    # one linger, then abort
                    await asyncio.wait({self._reader}, timeout=LINGER_AFTER_ACK)
                    break
                if pending == 0:
                    acked_at = now if acked_at is None else acked_at
                    if now - core.last_input > ACK_POLL * 2 or now - acked_at >= LINGER_AFTER_ACK:
                        break
                wait = poll if pending is not None else deadline - now
                await asyncio.wait({self._reader}, timeout=wait)
                poll = min(poll * 2, ACK_POLL)
        except (TimeoutError, StreamError, OSError):
            self._drop()
            return
        except asyncio.CancelledError:
            self._drop()
            raise
        self._reader.cancel()
        self._writer.cancel()
        if not finish:
            pipe.abort()
            return
        try:
            async with asyncio.timeout(1.0):
                await pipe.close()
        except (TimeoutError, StreamError, OSError):
            pipe.abort()
        except asyncio.CancelledError:  # the carrier's own closing task may end cancelled
            pipe.abort()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        for task in (self._writer, self._reader):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class PipeStream(CoreStream):
    """The one stream of a chain without multiplexing. A plain pipe carries no codes:
    ``reset`` aborts the pipe (the peer sees network-error), ``stop_sending`` only stops
    delivering what arrives and fails local reads with the code."""


class SingleStreamConnection(OneStreamConnection):
    """The one stream of a chain without ``~mux`` (add ``~mux`` to the address for many)."""

    stream_class = PipeStream
    advice = "; add ~mux for more"

    def __init__(
        self, pipe: Pipe, address: AddressLike, remote: RemoteIdentity | None = None
    ) -> None:
        self._pipe = pipe
        super().__init__(
            SinglePipeAdapter(pipe),
            address=address,
            remote=remote if remote is not None else pipe.remote,
        )

    def __repr__(self) -> str:
        return f"<SingleStreamConnection {self.address or '?'}{' closed' if self.closed else ''}>"

    @property
    def transport_name(self) -> str:
        address = self.address
        return address.transport.name if address is not None else "pipe"
