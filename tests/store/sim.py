"""A deterministic discrete-event store for driving ``StoreCore`` without asyncio or sockets."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from keywire.errors import StreamError
from keywire.store.core import (
    DataReceived,
    EndReceived,
    FrameRejected,
    GetOp,
    PutOp,
    ReadFailed,
    StoreCore,
    WriteFailed,
)


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


class SimStore:
    """Puts land after a latency (reordered by jitter), may be lost or applied twice."""

    def __init__(self, *, loss: float = 0.0, duplicate: float = 0.0, latency: float = 0.005,
                 jitter: float = 0.0, seed: int = 1) -> None:
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

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, action))

    def _delay(self) -> float:
        return self.latency + self.rng.uniform(0, self.jitter)

    def _land(self, address: bytes, value: bytes) -> None:
        self.data[address] = value
        for op, end, _deadline in self._waiting.pop(address, []):
            end.core.get_done(op, value, self.now)

    def start(self, end: Endpoint, op: PutOp | GetOp) -> None:
        if isinstance(op, PutOp):
            self.puts += 1
            if self.rng.random() >= self.loss and op.address not in self.black_hole:
                self.at(self.now + self._delay(), lambda: self._land(op.address, op.value))
                if self.rng.random() < self.duplicate:
                    self.at(self.now + 2 * self._delay(),
                            lambda: self._land(op.address, op.value))
            self.at(self.now + self.latency, lambda: end.core.put_done(op, None, self.now))
            return
        self.gets += 1

        def answer() -> None:
            value = self.data.get(op.address)
            if value is not None or op.wait <= 0:
                end.core.get_done(op, value, self.now)
                return
            deadline = self.now + op.wait
            self._waiting.setdefault(op.address, []).append((op, end, deadline))

            def expire() -> None:
                waiting = self._waiting.get(op.address, [])
                for entry in list(waiting):
                    if entry[0] is op:
                        waiting.remove(entry)
                        end.core.get_done(op, None, self.now)

            self.at(deadline, expire)

        self.at(self.now + self.latency, answer)

    def run(self, ends: list[Endpoint], done: Callable[[], bool], limit: float = 600.0) -> float:
        """Advance simulated time until ``done()``; returns the simulated seconds it took."""
        steps = 0
        while not done():
            steps += 1
            assert steps < 2_000_000, "simulation does not converge"
            for end in ends:
                if end.outbox:
                    try:
                        taken = end.core.write(end.outbox)
                    except StreamError as exc:
                        end.write_error, end.outbox, taken = exc, b"", 0
                    end.outbox = end.outbox[taken:]
                    if not end.outbox and end.close_after:
                        end.core.close_write()
                for op in end.core.poll(self.now):
                    self.start(end, op)
                for event in end.core.events():
                    if isinstance(event, DataReceived):
                        end.received += event.data
                        end.core.consumed(len(event.data))
                    elif isinstance(event, EndReceived):
                        end.eof = True
                    elif isinstance(event, ReadFailed):
                        end.errors.append(event)
                    elif isinstance(event, FrameRejected):
                        end.rejected.append(event)
                    elif isinstance(event, WriteFailed):
                        end.write_failures.append(event)
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
