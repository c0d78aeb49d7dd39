"""The receiving half of a store stream: the peer's frames, from the store to ``read``.

Gets for the next indices run at once; frames are reordered and delivered in order. A value
that does not open, decode or carry its own index is rejected and read again (a legitimate
put may overwrite it) until ``bad_frame_tries``. A full read buffer does not stop the gets:
data frames wait in the reorder buffer, but the façade takes the peer's ack from each frame as
it arrives. The receiver also owns what we owe the peer: the cumulative ack, and our
StopSending (``stop``), whose frame the sender builds in our own direction.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .. import events as ev
from ..errors import Code
from .context import SavedState, StreamContext
from .frame import CONTROL_FRAMES, NO_ACK, Frame, FrameError, FrameType, open_frame
from .ops import FrameRejected, GetOp, Op, Purpose


class ReadState(enum.Enum):
    OPEN = "open"
    ENDED = "ended"
    FAILED = "failed"


class StopState(enum.Enum):
    """Our ``stop_sending``: whether a StopSending frame is owed, sent, or not needed."""

    NONE = "none"  # not called
    LOCAL = "local"  # called when nothing was left to stop (or multicast): local only
    PENDING = "pending"  # the frame is to be built
    SENT = "sent"  # built (at ``stop_idx``)


@dataclass
class ReadSlot:
    """Per-index bookkeeping of the reader's gets."""

    op: GetOp | None = None
    issued: float = 0.0
    due: float = 0.0
    misses: int = 0
    failures: int = 0
    bad: int = 0


#: the peer's frames the façade acts on once they are delivered
SIGNALS = (FrameType.END, FrameType.RESET, FrameType.STOP_SENDING)
#: why reads fail (``ReadsFailed``): our own StopSending, or the peer's Reset
STOPPED_LOCALLY = "reading was stopped locally"
PEER_RESET = "peer reset the stream"


class StoreReceiver:
    """The peer's direction of one store stream; see the module docstring."""

    def __init__(self, ctx: StreamContext) -> None:
        p = ctx.params
        self._ctx = ctx
        self.ack_every = p.ack_every or max(1, p.window // 2)
        #: new reads are started this many at a time (see ``poll``); the shell sets it
        #: for a store that gains from it (``read_group``)
        self.group = 1
        self.max_read_buffer = p.max_read_buffer or 4 * p.window * ctx.capacity
        self.read_idx = 0
        self.state = ReadState.OPEN
        self.reorder: dict[int, Frame] = {}
        self._slots: dict[int, ReadSlot] = {}
        self.ack_sent = -1
        self.pending_acks = 0
        self.ack_due: float | None = None
        self._unconsumed: deque[bytes] = deque()
        self._unconsumed_size = 0
        self.bytes_read = 0
        self._discard = False
        self.stop = StopState.NONE
        self.stop_code = 0
        self.stop_idx = -1
        #: ``goodbye``: the StopSending is sent even when the peer's direction has ended
        self.stop_forced = False
        #: the code of the latest StopSending of the peer read (acted on or not; None: none):
        #: the peer reads nothing more of ours
        self.peer_stop_seen: int | None = None
        #: the code of the peer's Reset, once read (None: no Reset read)
        self.peer_reset_code: int | None = None
        if ctx.publisher:
            self.state = ReadState.ENDED  # nobody writes to a multicast publisher: EOF
            ctx.events.append(ev.StreamData(0, b"", fin=True))

    # ============================================================================== status
    def describe(self, now: float) -> str:
        """One line on where the peer's direction stands (for a stall report): the next index
        to deliver, frames held out of order, the reads in flight and waiting, acks."""
        slots = " ".join(
            f"{index}:"
            + (
                f"get {now - slot.issued:.1f}s"
                if slot.op is not None
                else f"@{slot.due - now:+.1f}"
            )
            + f"/m{slot.misses}/f{slot.failures}/b{slot.bad}"
            for index, slot in sorted(self._slots.items())[:12]
        )
        due = "-" if self.ack_due is None else f"{self.ack_due - now:+.1f}"
        return (
            f"read {self.state.name.lower()} idx {self.read_idx} held {sorted(self.reorder)[:8]} "
            f"unread {self._unconsumed_size} ack_sent {self.ack_sent} "
            f"pending_acks {self.pending_acks} ack_due {due}; {len(self._slots)} slots: {slots}"
        )

    @property
    def open(self) -> bool:
        return self.state is ReadState.OPEN

    @property
    def heard_peer(self) -> bool:
        """A frame of the peer has been read (a listener's cue that a dialer arrived)."""
        return self.read_idx > 0 or self.state is not ReadState.OPEN

    @property
    def peer_done(self) -> bool:
        """The peer asked us to stop and its own direction ended: it reads and acks nothing."""
        return self.peer_stop_seen is not None and self.state is not ReadState.OPEN

    # ================================================================================ acks
    def ack_field(self) -> int:
        if not self._ctx.duplex or self.read_idx == 0:
            return NO_ACK
        return self.read_idx - 1

    def ack_built(self) -> None:
        if self._ctx.duplex and self.read_idx > 0:
            self.ack_sent = self.read_idx - 1
            self.pending_acks = 0
            self.ack_due = None

    def ack_wanted(self, now: float) -> bool:
        """A bare ack is due (enough ack-eliciting frames, or the ack delay ran out)."""
        if not self._ctx.duplex or self.pending_acks == 0:
            return False
        return self.pending_acks >= self.ack_every or (
            self.ack_due is not None and now >= self.ack_due
        )

    # ========================================================================= application
    def consumed(self, n: int) -> None:
        self.bytes_read += n
        self._unconsumed_size -= n
        while n > 0 and self._unconsumed:
            head = self._unconsumed[0]
            if len(head) <= n:
                self._unconsumed.popleft()
                n -= len(head)
            else:
                self._unconsumed[0] = head[n:]
                n = 0

    def stop_sending(self, code: int, remote: bool) -> None:
        """Discard what arrives from now on; a StopSending frame is owed if ``remote`` and the
        peer's direction is still open (otherwise it is local only)."""
        if self.stop is not StopState.NONE:
            return
        self._discard = True
        self.stop_code = code & 0xFFFFFFFF
        # (after the peer's End the shell's buffer ignores this if everything was read)
        self._ctx.events.append(ev.ReadsFailed(0, code, STOPPED_LOCALLY, remote=False))
        remote = remote and self.open and not self._ctx.multicast_reader
        self.stop = StopState.PENDING if remote else StopState.LOCAL

    def force_stop(self, code: int) -> None:
        """``goodbye``: the StopSending goes out even if the peer's direction has ended."""
        if self.stop is StopState.NONE:
            self.stop_sending(code, remote=True)
        if self.stop is StopState.LOCAL:
            self.stop = StopState.PENDING
        self.stop_forced = True

    def stop_built(self, index: int) -> None:
        self.stop, self.stop_idx = StopState.SENT, index

    def direction_ended(self) -> int | None:
        """The peer's End or Reset was delivered: nothing is left to stop. An unbuilt
        StopSending is dropped; a sent one's index is returned (it needs no ack any more)."""
        if self.stop is StopState.PENDING:
            if not self.stop_forced:
                self.stop = StopState.LOCAL
        elif self.stop is StopState.SENT:
            return self.stop_idx
        return None

    # ========================================================================== store ops
    def group_reads(self) -> None:
        """Start new reads in groups of a quarter window (``poll``): for a store on which
        gets started together cost fewer requests."""
        self.group = max(1, self._ctx.params.window // 4)

    def reading(self, awaiting_acks: bool, stoppable: bool) -> bool:
        """Whether to keep reading, given the sender's ``awaiting_acks`` and ``stoppable``."""
        if self._ctx.publisher:
            return False
        if self.open:
            # also with a full read buffer: the peer's acks travel in its frames, and an
            # application blocked in write (its window full) would otherwise never read again
            # (data frames then wait in the reorder buffer, at most the read span of them)
            return True
        # the peer ended: keep reading for acks of our frames, and while our direction is open
        # for a StopSending the peer may still send
        return self._ctx.duplex and (awaiting_acks or stoppable)

    def _read_span(self, awaiting_acks: bool) -> int:
        """Indices read at once. Twice the window: the peer's bare acks sit between its data
        frames, outside its window, and the freshest acks are in its newest frames. After the
        peer's End, with nothing of ours to ack, only a StopSending can come: one get."""
        if not self.open and not awaiting_acks:
            return 1
        return 2 * self._ctx.params.window

    def poll(self, now: float, ops: list[Op], awaiting_acks: bool, stoppable: bool) -> None:
        if not self.reading(awaiting_acks, stoppable):
            return
        keys, wait = self._ctx.keys.read, self._ctx.params.get_wait
        span = self._read_span(awaiting_acks)
        end = self.read_idx + span
        # new indices (never read yet, at the far end of the span) are started in groups of
        # ``group`` while other gets are in flight (an outcome brings the next poll), so a
        # store that can start several waiting gets in one request (one Redis SUBSCRIBE)
        # does; the peer cannot write that far ahead before we ack more (2 × window read)
        first_new = max(self._slots, default=self.read_idx - 1) + 1
        fresh = end - max(first_new, self.read_idx)
        if 0 < fresh < min(self.group, span) and any(
            slot.op is not None for slot in self._slots.values()
        ):
            end -= fresh
        for index in range(self.read_idx, end):
            if index in self.reorder:
                continue
            slot = self._slots.get(index)
            if slot is None:
                slot = self._slots[index] = ReadSlot()
            if slot.op is not None or slot.due > now:
                continue
            op = GetOp(index, keys.frame_id(index), wait, Purpose.READ)
            slot.op, slot.issued = op, now
            ops.append(op)

    def deadlines(self, awaiting_acks: bool, stoppable: bool) -> list[float]:
        times: list[float] = []
        if self.reading(awaiting_acks, stoppable):
            end = self.read_idx + self._read_span(awaiting_acks)
            times.extend(
                slot.due for index, slot in self._slots.items() if slot.op is None and index < end
            )
        if self.ack_due is not None and self.pending_acks:
            times.append(self.ack_due)
        return times

    def read_done(self, op: GetOp, value: bytes | None, now: float) -> Frame | None:
        """A read returned; the frame it opened (kept for delivery), or None."""
        slot = self._slots.get(op.index)
        if slot is None or slot.op is not op:
            return None
        slot.op = None
        slot.failures = 0
        if value is None:
            # a long poll that came back early (a store without blocking gets) must not spin
            quick = now - slot.issued < op.wait / 2
            slot.misses = slot.misses + 1 if quick else 0
            slot.due = now + (self._ctx.backoff(0.005, slot.misses - 1, 0.5) if quick else 0.0)
            return None
        try:
            frame = open_frame(self._ctx.keys.read, op.index, value, self._ctx.max_value)
        except FrameError as exc:
            slot.bad += 1
            self._ctx.events.append(FrameRejected(op.index, str(exc)))
            if slot.bad >= self._ctx.params.bad_frame_tries:
                raise FrameError(f"{exc} ({slot.bad} times; giving up)") from None
            slot.due = self._ctx.retry_at(now, slot.bad)
            return None
        del self._slots[op.index]
        self.reorder[op.index] = frame
        return frame

    def read_failed(self, op: GetOp, now: float) -> None:
        slot = self._slots.get(op.index)
        if slot is not None and slot.op is op:
            slot.op = None
            slot.failures += 1
            slot.due = self._ctx.retry_at(now, slot.failures)

    # ============================================================================ delivery
    def deliver_ready(self, now: float) -> Iterator[Frame]:
        """Deliver the frames that are next in order, except data while the read buffer is
        full: those wait in ``reorder`` (their acks were already used) until the application
        reads, so a full buffer never stops us from hearing acks. Yields each delivered End,
        Reset and StopSending, for the façade to act on before the next frame."""
        while self.read_idx in self.reorder:
            frame = self.reorder[self.read_idx]
            if (
                frame.payload
                and frame.type not in CONTROL_FRAMES
                and not self._discard
                and self.open
                and self._unconsumed_size >= self.max_read_buffer
            ):
                return
            del self.reorder[self.read_idx]
            self._deliver(frame, now)
            if frame.type in SIGNALS:
                yield frame

    def _deliver(self, frame: Frame, now: float) -> None:
        index = frame.id
        if frame.type is FrameType.START and index != 0:
            raise FrameError(f"frame {index}: Start frame after frame 0")
        after_end = frame.type in (FrameType.JUMP, FrameType.STOP_SENDING) or (
            frame.type is FrameType.DATA and not frame.payload
        )
        if not self.open and not after_end:
            raise FrameError(
                f"frame {index}: {frame.type.name} frame after the peer's "
                f"{'End' if self.state is ReadState.ENDED else 'Reset'}"
            )
        carries_data = frame.type not in CONTROL_FRAMES
        if frame.payload and carries_data and not self._discard:
            self._unconsumed.append(frame.payload)
            self._unconsumed_size += len(frame.payload)
            self._ctx.events.append(ev.StreamData(0, frame.payload))
        if frame.type is FrameType.END:
            self.state = ReadState.ENDED
            self._ctx.events.append(ev.StreamData(0, b"", fin=True))
        elif frame.type is FrameType.RESET:
            if len(frame.payload) != 4:
                raise FrameError(
                    f"frame {index}: Reset payload of {len(frame.payload)} "
                    "bytes, expected a 4-byte code"
                )
            code = struct.unpack(">I", frame.payload)[0]
            self.state = ReadState.FAILED
            self.peer_reset_code = code
            # after the peer's StopSending with the same code this Reset is its close(code) or
            # abort(code): the bytes before it stay readable, then the code (as QUIC's
            # RESET_STREAM_AT); a bare reset() drops what was not read yet
            if self.peer_stop_seen != code:
                self._ctx.events.append(ev.StreamReset(0, code))
            else:
                self._ctx.events.append(ev.ReadsFailed(0, code, PEER_RESET, discard=False))
        elif frame.type is FrameType.STOP_SENDING:
            self.peer_stop_seen = struct.unpack(">I", frame.payload)[0]
        self.read_idx = index + 1
        if frame.type is FrameType.JUMP:
            target = struct.unpack(">Q", frame.payload)[0] if len(frame.payload) == 8 else 0
            if not index < target <= index + (1 << 20):
                raise FrameError(f"frame {index}: Jump to {target} is not ahead of it")
            for stale in [i for i in self.reorder if i < target]:
                del self.reorder[stale]
            for stale in [i for i in self._slots if i < target]:
                del self._slots[stale]
            self.read_idx = target
        if frame.elicits_ack and self._ctx.duplex:
            self.pending_acks += 1
            if self.ack_due is None:
                self.ack_due = now + self._ctx.params.ack_delay

    # ========================================================================== recovery
    def adopt_stop(self, frame: Frame) -> None:
        """Our previous run sent this StopSending after the snapshot: it stands."""
        if self.stop is StopState.NONE:
            self.stop_code = struct.unpack(">I", frame.payload)[0]
            self._discard = True
            if self.open:
                self._ctx.events.append(
                    ev.ReadsFailed(0, self.stop_code, STOPPED_LOCALLY, remote=False)
                )
        self.stop_built(frame.id)

    def save(self) -> dict[str, Any]:
        return {
            "read_idx": self.read_idx,
            "rstate": self.state.value,
            "ack_sent": self.ack_sent,
            "pending_acks": self.pending_acks,
            "bytes_read": self.bytes_read,
            "unconsumed": b"".join(self._unconsumed),
            "stop": self.stop.value,
            "stop_code": self.stop_code,
            "stop_idx": self.stop_idx,
            "stop_forced": self.stop_forced,
            "peer_stop_seen": -1 if self.peer_stop_seen is None else self.peer_stop_seen,
        }

    def load(self, saved: SavedState, now: float) -> None:
        """Resume from ``save()``: what was delivered but not read is delivered again."""
        self.read_idx = saved.num("read_idx")
        self.state = ReadState(saved["rstate"])
        self.ack_sent = saved.num("ack_sent")
        self.pending_acks = saved.num("pending_acks")
        self.bytes_read = saved.num("bytes_read")
        unconsumed = saved.raw("unconsumed")
        # StopSending and goodbye came later: optional, so states saved before them still load
        self.stop = StopState(saved.get("stop", StopState.NONE.value))
        self.stop_code = saved.code("stop_code", 0)
        self.stop_idx = saved.num("stop_idx", -1)
        self.stop_forced = bool(saved.get("stop_forced", False))
        seen = saved.num("peer_stop_seen", -1)
        self.peer_stop_seen = None if seen < 0 else seen
        if self.pending_acks:
            self.ack_due = now
        events = self._ctx.events
        if unconsumed:
            self._unconsumed.append(unconsumed)
            self._unconsumed_size = len(unconsumed)
            events.append(ev.StreamData(0, unconsumed))
        if self.stop is not StopState.NONE:  # reading stays stopped (before any End: it fails)
            self._discard = True
            events.append(ev.ReadsFailed(0, self.stop_code, STOPPED_LOCALLY, remote=False))
        if self.state is ReadState.ENDED and not self._ctx.publisher:
            events.append(ev.StreamData(0, b"", fin=True))
        elif self.state is ReadState.FAILED:
            events.append(ev.ReadsFailed(0, Code.RESET, PEER_RESET, discard=False))
