"""A deterministic discrete-event store for driving ``StoreCore`` without asyncio or sockets.

Besides loss, duplication and jitter it models what a real store does during an outage:
``pause`` (SIGSTOP: requests queue and are answered after it), ``restart`` (kill -9 and a
restart with persistence: requests in flight fail, the store refuses connections until it is
back, stored values survive) and lost wake-ups (a put that does not wake a waiting get, which
then answers only at its re-check or its deadline). An ``Endpoint`` may run an echo
application that reads only what it can write back, as ``keywire listen --echo`` does.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from keywire import events as ev
from keywire.errors import StreamError
from keywire.store.core import FrameRejected, GetOp, PutOp, StoreCore


@dataclass(frozen=True)
class ReadFailed:
    """What ``read`` would raise (``discard``: the bytes not yet read are dropped)."""

    error: StreamError
    discard: bool = False


@dataclass(frozen=True)
class WriteFailed:
    """Our writes failed: the peer's StopSending (the error ``write`` raises), or a fatal error."""

    error: StreamError


@dataclass
class Endpoint:
    core: StoreCore
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False
    errors: list[ReadFailed] = field(default_factory=list)
    rejected: list[FrameRejected] = field(default_factory=list)
    outbox: bytes = b""
    close_after: bool = True
    write_failures: list[WriteFailed] = field(default_factory=list)
    #: what ``write`` raised (the rest of the outbox is then dropped)
    write_error: StreamError | None = None
    #: echo what arrives, reading (consuming) only once the previous chunk was written, like
    #: ``data = await read(chunk); await write(data)``; ends its side after the peer's End
    echo: bool = False
    echo_chunk: int = 65536
    #: delivered but not yet read by the (echo) application
    inbox: bytearray = field(default_factory=bytearray)
    #: read by the echo application, not yet taken by ``write``
    pending: bytes = b""

    def step_app(self) -> None:
        if self.echo:
            self._echo()
        elif self.outbox:
            try:
                taken = self.core.write(self.outbox)
            except StreamError as exc:
                self.write_error, self.outbox, taken = exc, b"", 0
            self.outbox = self.outbox[taken:]
            if not self.outbox and self.close_after:
                self.core.close_write()

    def _echo(self) -> None:
        while self.write_error is None:
            if not self.pending:
                if not self.inbox:
                    if self.eof and not self.core.write_finished:
                        self.core.close_write()
                    return
                self.pending = bytes(self.inbox[: self.echo_chunk])
                del self.inbox[: len(self.pending)]
                self.core.consumed(len(self.pending))
            try:
                taken = self.core.write(self.pending)
            except StreamError as exc:
                self.write_error = exc
                return
            self.pending = self.pending[taken:]
            if self.pending:
                return  # blocked in write: reads nothing more meanwhile

    def take_events(self) -> None:
        """The core's events, as the shell would see them: reads and writes that fail are
        recorded with the error ``read``/``write`` would raise."""
        for event in self.core.events():
            if isinstance(event, ev.StreamData):
                self.received += event.data
                if self.echo:
                    self.inbox += event.data
                else:
                    self.core.consumed(len(event.data))
                self.eof = self.eof or event.fin
            elif isinstance(event, ev.StreamReset):
                error = StreamError(event.code, "peer reset the stream", remote=True)
                self.errors.append(ReadFailed(error, discard=True))
            elif isinstance(event, ev.ReadsFailed):
                error = StreamError(event.code, event.reason, remote=event.remote)
                self.errors.append(ReadFailed(error, discard=event.discard))
            elif isinstance(event, FrameRejected):
                self.rejected.append(event)
            elif isinstance(event, ev.StopSendingReceived):
                error = self.core.sender.write_error
                assert error is not None and error.wire_code == event.code
                self.write_failures.append(WriteFailed(error))
            elif isinstance(event, ev.ConnectionTerminated):
                assert self.core.failed is not None
                self.errors.append(ReadFailed(self.core.failed))
                self.write_failures.append(WriteFailed(self.core.failed))


class SimStore:
    """Puts land after a latency (reordered by jitter), may be lost or applied twice."""

    def __init__(
        self,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        latency: float = 0.005,
        jitter: float = 0.0,
        seed: int = 1,
        lost_wakeup: float = 0.0,
        recheck: float | None = None,
    ) -> None:
        self.data: dict[bytes, bytes] = {}
        self.loss = loss
        self.duplicate = duplicate
        self.latency = latency
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._waiting: dict[bytes, list[tuple[GetOp, Endpoint, float]]] = {}
        self.puts = 0
        self.gets = 0
        #: addresses whose puts are always lost (to make a hole on purpose)
        self.black_hole: set[bytes] = set()
        #: chance that a put does not wake a waiting get (a pub/sub message lost)
        self.lost_wakeup = lost_wakeup
        #: how often a waiting get reads again by itself (None: only at its deadline)
        self.recheck = recheck
        #: (start, end) of SIGSTOP-like pauses: nothing is answered inside them
        self.pauses: list[tuple[float, float]] = []
        #: (kill, back) of restarts: in-flight requests fail at kill, none served until back
        self.restarts: list[tuple[float, float]] = []
        self._generation = 0
        self.failed_ops = 0

    # -- outages -----------------------------------------------------------------------------
    def pause(self, start: float, length: float) -> None:
        self.pauses.append((start, start + length))

    def restart(self, kill: float, down: float) -> None:
        self.restarts.append((kill, kill + down))
        self.at(kill, self._kill, store_side=False)

    def _after_pauses(self, when: float) -> float:
        for start, end in sorted(self.pauses):
            if start <= when < end:
                when = end
        return when

    def _down(self, when: float) -> bool:
        return any(kill <= when < back for kill, back in self.restarts)

    def _kill(self) -> None:
        """Every request in flight fails; stored values survive (persistence)."""
        self._generation += 1
        waiting, self._waiting = self._waiting, {}
        for entries in waiting.values():
            for op, end, _deadline in entries:
                self.failed_ops += 1
                end.core.get_failed(op, "connection reset (store killed)", self.now)

    # -- scheduling --------------------------------------------------------------------------
    def at(self, when: float, action: Callable[[], None], *, store_side: bool = True) -> None:
        if store_side:
            when = self._after_pauses(when)
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, action))

    def _delay(self) -> float:
        return self.latency + self.rng.uniform(0, self.jitter)

    def _land(self, address: bytes, value: bytes) -> None:
        self.data[address] = value
        woken: list[tuple[GetOp, Endpoint, float]] = []
        kept: list[tuple[GetOp, Endpoint, float]] = []
        for entry in self._waiting.pop(address, []):
            (kept if self.rng.random() < self.lost_wakeup else woken).append(entry)
        if kept:
            self._waiting[address] = kept
        for op, end, _deadline in woken:
            end.core.get_done(op, value, self.now)

    def start(self, end: Endpoint, op: PutOp | GetOp) -> None:
        generation = self._generation
        if self._down(self.now):  # connection refused, after a round trip
            self.failed_ops += 1
            if isinstance(op, PutOp):
                self.at(
                    self.now + self.latency,
                    lambda: end.core.put_done(op, "connection refused", self.now),
                    store_side=False,
                )
            else:
                self.at(
                    self.now + self.latency,
                    lambda: end.core.get_failed(op, "connection refused", self.now),
                    store_side=False,
                )
            return
        if isinstance(op, PutOp):
            self.puts += 1
            if self.rng.random() >= self.loss and op.address not in self.black_hole:
                self.at(self.now + self._delay(), lambda: self._land(op.address, op.value))
                if self.rng.random() < self.duplicate:
                    self.at(self.now + 2 * self._delay(), lambda: self._land(op.address, op.value))

            def put_answer() -> None:
                if generation != self._generation:
                    self.failed_ops += 1
                    end.core.put_done(op, "connection reset", self.now)
                else:
                    end.core.put_done(op, None, self.now)

            self.at(self.now + self.latency, put_answer)
            return
        self.gets += 1

        def answer() -> None:
            if generation != self._generation:
                self.failed_ops += 1
                end.core.get_failed(op, "connection reset", self.now)
                return
            value = self.data.get(op.address)
            if value is not None or op.wait <= 0:
                end.core.get_done(op, value, self.now)
                return
            deadline = self.now + op.wait
            entry = (op, end, deadline)
            self._waiting.setdefault(op.address, []).append(entry)

            def expire() -> None:
                waiting = self._waiting.get(op.address, [])
                if entry in waiting:
                    waiting.remove(entry)
                    if not waiting:
                        del self._waiting[op.address]
                    end.core.get_done(op, self.data.get(op.address), self.now)

            def recheck() -> None:
                waiting = self._waiting.get(op.address, [])
                if entry not in waiting:
                    return
                value = self.data.get(op.address)
                if value is not None:
                    waiting.remove(entry)
                    if not waiting:
                        del self._waiting[op.address]
                    end.core.get_done(op, value, self.now)
                elif self.now + self.recheck < deadline:  # type: ignore[operator]
                    self.at(self.now + self.recheck, recheck)  # type: ignore[operator]

            self.at(deadline, expire)
            if self.recheck is not None:
                self.at(self.now + self.recheck, recheck)

        self.at(self.now + self.latency, answer)

    def run(self, ends: list[Endpoint], done: Callable[[], bool], limit: float = 600.0) -> float:
        """Advance simulated time until ``done()``; returns the simulated seconds it took."""
        steps = 0
        while not done():
            steps += 1
            assert steps < 2_000_000, "simulation does not converge"
            for end in ends:
                end.step_app()
                for op in end.core.poll(self.now):
                    self.start(end, op)
                end.take_events()
                end.step_app()
                for op in end.core.poll(self.now):
                    self.start(end, op)
            if done():
                break
            deadlines = [d for d in (e.core.next_deadline() for e in ends) if d is not None]
            next_event = self._queue[0][0] if self._queue else None
            candidates = deadlines + ([next_event] if next_event is not None else [])
            assert candidates, "simulation is stuck: nothing scheduled"
            target = min(candidates)
            assert target < limit, f"simulation passed {limit} s"
            self.now = max(self.now, target)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, action = heapq.heappop(self._queue)
                action()
        return self.now
