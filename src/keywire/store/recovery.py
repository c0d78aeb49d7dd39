"""After a restore: find out what the previous run put after its snapshot, before writing.

A restored stream may have put frames after the state was saved; a reader may hold them, so we
must not write other contents at those indices. Recovery reads our own frames back: first
contiguously from the saved index (each found frame is adopted as written), then, past the
first missing one, a window's worth beyond it. A frame found there was put after a lost one;
the hole is covered with a Jump frame, so the reader skips it.
"""

from __future__ import annotations

from .context import StreamContext
from .frame import Frame, FrameError, FrameType, open_frame
from .ops import FrameRejected, GetOp, Op, Purpose
from .receiver import StoreReceiver
from .sender import StoreSender


class StoreRecovery:
    """The read-back of our own direction after ``StoreCore.from_snapshot``."""

    def __init__(self, ctx: StreamContext, sender: StoreSender, receiver: StoreReceiver) -> None:
        self._ctx = ctx
        self._sender = sender
        self._receiver = receiver
        #: the stream polls nothing else until this is False
        self.active = False
        self._op: GetOp | None = None
        self._due = 0.0
        self._failures = 0
        #: after the scan stops at a missing frame: indices beyond it still to probe
        self._todo: set[int] | None = None
        self._probes: dict[int, GetOp] = {}
        self._found = -1

    def _get(self, index: int) -> GetOp:
        return GetOp(index, self._ctx.keys.write.frame_id(index), 0.0, Purpose.RECOVER)

    def poll(self, now: float) -> list[Op]:
        if self._due > now:
            return []
        if self._todo is not None:
            ops: list[Op] = []
            for index in sorted(self._todo):
                op = self._probes[index] = self._get(index)
                ops.append(op)
            self._todo.clear()
            return ops
        if self._op is not None:
            return []
        self._op = self._get(self._sender.write_idx)
        return [self._op]

    def deadline(self) -> float | None:
        idle = self._op is None and not self._probes
        return self._due if idle else None

    def done(self, op: GetOp, value: bytes | None, now: float) -> None:
        """One of our frames read back (``value`` None: not in the store)."""
        keys, limit = self._ctx.keys.write, self._ctx.max_value
        if self._probes.get(op.index) is op:
            del self._probes[op.index]
            if value is not None:
                try:
                    open_frame(keys, op.index, value, limit)
                    self._found = max(self._found, op.index)
                except FrameError:
                    pass
            if not self._probes and not self._todo:
                self._finish(now)
            return
        if self._op is not op:
            return
        self._op = None
        self._failures = 0
        frame: Frame | None = None
        if value is not None:
            try:
                frame = open_frame(keys, op.index, value, limit)
            except FrameError as exc:
                self._ctx.events.append(FrameRejected(op.index, f"while recovering: {exc}"))
        if frame is None:
            span = 4 * self._ctx.params.window + 8
            self._todo = set(range(op.index + 1, op.index + 1 + span))
            return
        self._adopt(frame, op.address, value or b"", now)

    def failed(self, op: GetOp, now: float) -> None:
        """A read-back failed at the store: it is retried with backoff."""
        if self._op is op:
            self._op = None
        elif self._probes.get(op.index) is op:
            del self._probes[op.index]
            assert self._todo is not None
            self._todo.add(op.index)
        else:
            return
        self._failures += 1
        self._due = self._ctx.retry_at(now, self._failures)

    def _finish(self, now: float) -> None:
        self.active = False
        if self._found >= self._sender.write_idx:
            self._sender.jump(self._found + 1, now)

    def _adopt(self, frame: Frame, address: bytes, value: bytes, now: float) -> None:
        """A frame our previous run put after the snapshot: take it as written."""
        needs_ack = self._ctx.duplex and frame.elicits_ack
        if frame.type is FrameType.STOP_SENDING:
            needs_ack = needs_ack and self._receiver.open
        self._sender.adopt(frame, address, value, needs_ack, now)
        if frame.type is FrameType.STOP_SENDING:
            self._receiver.adopt_stop(frame)
