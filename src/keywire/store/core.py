"""The sans-IO store stream: Katzenpost's frames with a reliable, pipelined protocol on top.

The core never touches a store, a clock or the event loop. ``poll(now)`` hands out the puts and
gets to start; the shell reports each outcome (``put_done`` / ``get_done``) and wakes the core at
``next_deadline()``. What it does, and why it differs from Katzenpost:

* **Writer.** Bytes are cut into frames of ``Geometry.payload_capacity``. At most ``window``
  frames that need an acknowledgement are outstanding; they are all put at once (pipelined),
  not one per timer tick. Each frame is resent, byte for byte, when its retransmission timeout
  expires; the timeout comes from measured round trips (RFC 6298 style, Karn's rule) and backs
  off exponentially with jitter while the peer makes no progress. Before that, when acks stall
  for about two minimal round trips, the oldest unacked frames are read back from the store
  and the lost ones put again (a head-of-line probe).
* **Acks.** Every frame carries the cumulative ``Ack`` of what we read. Frames with data, End or
  Reset elicit an ack (after ``ack_every`` of them or ``ack_delay``); a bare ack elicits
  nothing, otherwise two idle peers would ack each other's acks for ever. A bare ack is still
  needed by the reader (frames are read in index order), so instead of an ack it is confirmed
  by reading it back from the store, and put again if it is missing.
* **Reader.** Gets for the next ``window`` indices run at once; frames are reordered and
  delivered in order. A value that does not open, decode, or carry its own index is rejected
  and retried (a legitimate put may overwrite it); after ``bad_frame_tries`` the stream fails
  with a protocol error naming the frame. A full read buffer does not stop the gets: data
  frames wait (unacknowledged) in the reorder buffer, but their acks are used at once, since
  an application blocked in ``write`` (window full) reads nothing until those acks arrive.
* **End and Reset** are acknowledged and retransmitted like data; each direction closes on its
  own (half-close).
* **StopSending** (a keywire extension, like Reset): ``stop_sending(code)`` discards what
  arrives and puts one StopSending frame in our own direction, even after our End or Reset.
  A peer whose direction is still open fails its writes with the code and resets with it. It is
  retransmitted until acked, or until the peer's End or Reset arrives (then nothing is left to
  stop, and it is only read back, like a bare ack).
* **Multicast.** The writer needs no acks (any number of readers): every frame is confirmed by
  reading it back, and failed or lost puts are retried.
* **save/restore.** ``snapshot()`` is the whole state; a restored core first reads back the
  frames its previous run may have put after the snapshot (so nothing is written twice with
  different contents) and resends whatever is unacknowledged. If the previous run left a hole
  (a lost frame followed by stored ones a reader may hold), it writes a Jump frame over it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from .. import events as ev
from ..errors import Code, StreamError
from .context import SNAPSHOT_VERSION, SavedState, StreamContext
from .frame import Frame, FrameError, FrameType, Geometry
from .ops import Event, FrameRejected, GetOp, Op, Purpose, PutOp, StoreTrouble
from .params import DEFAULT_VALUE_SIZE, Mode, StoreParams
from .receiver import StopState, StoreReceiver
from .recovery import StoreRecovery
from .schedule import KeySchedule, Role
from .sender import StoreSender, WriteState

__all__ = [
    "DEFAULT_VALUE_SIZE",
    "SNAPSHOT_VERSION",
    "Event",
    "FrameRejected",
    "GetOp",
    "Mode",
    "Op",
    "Purpose",
    "PutOp",
    "StoreCore",
    "StoreParams",
    "StoreTrouble",
]


@dataclass
class StoreCore:
    """One end of a store stream: the façade over its sender, receiver and recovery, which
    routes the application's calls and the store's outcomes to them and acts on what one
    learns that concerns another (the peer's ack and StopSending, the end of its direction)."""

    secret: bytes
    role: Role
    params: StoreParams = field(default_factory=StoreParams)
    mode: Mode = Mode.DUPLEX

    def __post_init__(self) -> None:
        ctx = self._ctx = StreamContext(self.secret, self.role, self.params, self.mode)
        self.receiver = StoreReceiver(ctx)
        self.sender = StoreSender(ctx, self.receiver)
        self.recovery = StoreRecovery(ctx, self.sender, self.receiver)
        self._fatal: StreamError | None = None

    # ================================================================================ status
    @property
    def keys(self) -> KeySchedule:
        return self._ctx.keys

    @property
    def geometry(self) -> Geometry:
        return self._ctx.geometry

    @property
    def capacity(self) -> int:
        return self._ctx.capacity

    @property
    def max_value(self) -> int:
        """Largest value accepted from the store (the peer may use another value size)."""
        return self._ctx.max_value

    @property
    def publisher(self) -> bool:
        return self._ctx.publisher

    @property
    def multicast_reader(self) -> bool:
        return self._ctx.multicast_reader

    @property
    def recovering(self) -> bool:
        return self.recovery.active

    @property
    def heard_peer(self) -> bool:
        """A frame of the peer has been read (a listener's cue that a dialer arrived)."""
        return self.receiver.heard_peer

    @property
    def failed(self) -> StreamError | None:
        return self._fatal

    @property
    def rto(self) -> float:
        return self.sender.rtt.rto

    @property
    def bytes_written(self) -> int:
        return self.sender.bytes_written

    @property
    def bytes_read(self) -> int:
        return self.receiver.bytes_read

    @property
    def peer_reset_code(self) -> int | None:
        """The code of the peer's Reset, once read (None: no Reset read)."""
        return self.receiver.peer_reset_code

    @property
    def write_space(self) -> int:
        return 0 if self.recovery.active else self.sender.space()

    @property
    def flushed(self) -> bool:
        """Every byte written has been put into the store at least once."""
        return self.sender.flushed

    @property
    def acked(self) -> bool:
        """Flushed, and the peer acknowledged it all (multicast: it reads back from the store)."""
        return self.sender.acked

    @property
    def write_finished(self) -> bool:
        return self.sender.finished

    @property
    def read_finished(self) -> bool:
        return not self.receiver.open

    @property
    def quiescent(self) -> bool:
        """Nothing of ours is unconfirmed and nothing we read awaits our ack."""
        return (
            self.sender.acked
            and not self.sender.sent
            and self.receiver.pending_acks == 0
            and not self.recovery.active
        )

    @property
    def finished(self) -> bool:
        """Both directions ended and everything is confirmed: the stream can stop."""
        if self._fatal is not None:
            return True
        return self.write_finished and self.read_finished and self.quiescent

    def events(self) -> list[Event]:
        queue = self._ctx.events
        out = list(queue)
        queue.clear()
        return out

    # ========================================================================== application
    def write(self, data: bytes | memoryview) -> int:
        """Buffer as much of ``data`` as fits; returns how many bytes were taken."""
        if self._fatal is not None:
            raise self._fatal
        self.sender.check_writable()
        n = min(len(data), self.write_space)
        if n:
            self.sender.append(data[:n])
        return n

    def close_write(self) -> None:
        self.sender.close()

    def reset(self, code: int) -> None:
        """Abandon our direction: buffered bytes are dropped, the peer's reads fail with code."""
        self.sender.reset(code)

    def stop_sending(self, code: int) -> None:
        """Discard what arrives from now (reads fail with ``code``) and, while the peer's
        direction is open, send it one StopSending(code) so its writes fail and it resets.
        After the peer's End or Reset was read, or as a multicast reader, it is local only."""
        self.receiver.stop_sending(code, remote=self._fatal is None)

    def goodbye(self, code: int) -> None:
        """Close the connection with ``code`` (non-zero): our direction ends with Reset(code)
        after the bytes already written, and a StopSending(code) goes out even if the peer's
        direction has ended, so the peer learns that nobody reads or acks any more and can
        finish without waiting for us."""
        code &= 0xFFFFFFFF
        self.sender.goodbye(code)
        self._force_stop(code)

    def _force_stop(self, code: int) -> None:
        if self._ctx.duplex and self._fatal is None:
            self.receiver.force_stop(code)

    def last_words(self, code: int, now: float) -> list[PutOp]:
        """An abort's best-effort notice to the peer: Reset(code) on our direction (if it has
        not ended) and StopSending(code), plus the puts of every frame before them not yet in
        the store, so the peer can read up to them. Nothing if nobody can know of us (we wrote
        nothing and heard nothing), the stream failed, or it is recovering. The core is dead
        after this: the shell stops polling it."""
        if (
            self._fatal is not None
            or self.recovery.active
            or self.multicast_reader
            or self.finished
            or (self.sender.write_idx == 0 and not self.heard_peer)
        ):
            return []
        self.reset(code)
        self._force_stop(code)
        if self.receiver.stop is StopState.PENDING:
            self._build_stop(now)
        if self.sender.state is WriteState.RESET_PENDING:
            self.sender.build_reset(now)
        return self.sender.unput()

    def consumed(self, n: int) -> None:
        """The application took ``n`` delivered bytes (frees read buffer, moves ``bytes_read``)."""
        self.receiver.consumed(n)

    def fail(self, error: StreamError) -> None:
        """End the stream with ``error`` (the shell's verdict, e.g. a value the store refuses)."""
        self._fail(error)

    def _fail(self, error: StreamError) -> None:
        if self._fatal is None:
            self._fatal = error
            self._ctx.events.append(ev.ConnectionTerminated(error.wire_code, str(error), False))

    # ============================================================================ the engine
    def poll(self, now: float) -> list[Op]:
        """Build due frames and return the store operations to start now."""
        if self._fatal is not None:
            return []
        if self.recovery.active:
            return self.recovery.poll(now)
        if self.receiver.reorder:
            try:
                self._deliver_ready(now)  # the application may have made room
            except FrameError as exc:
                self._fail(StreamError(Code.PROTOCOL_ERROR, str(exc)))
                return []
        self._build_frames(now)
        ops: list[Op] = []
        sender = self.sender
        sender.poll(now, ops)
        self.receiver.poll(now, ops, sender.awaiting_acks, sender.stoppable)
        return ops

    def next_deadline(self) -> float | None:
        if self._fatal is not None:
            return None
        if self.recovery.active:
            return self.recovery.deadline()
        sender = self.sender
        times = sender.deadlines()
        times += self.receiver.deadlines(sender.awaiting_acks, sender.stoppable)
        return float(min(times)) if times else None

    def put_done(self, op: PutOp, error: str | None, now: float) -> None:
        """The store finished ``op``; ``error`` is None on success."""
        self.sender.put_done(op, error, now)

    def get_done(self, op: GetOp, value: bytes | None, now: float) -> None:
        """A get returned ``value`` (None: not there before its wait ran out)."""
        if self._fatal is not None:
            return
        try:
            if op.purpose is Purpose.READ:
                frame = self.receiver.read_done(op, value, now)
                if frame is not None:
                    if self._ctx.duplex:
                        # acks are cumulative and authenticated: use them as they arrive, not
                        # in order, so a frame lost in the other direction does not delay them
                        self.sender.on_peer_ack(frame.ack, now)
                    self._deliver_ready(now)
            elif op.purpose is Purpose.VERIFY:
                self.sender.verify_done(op, value, now)
            elif op.purpose is Purpose.PROBE:
                self.sender.probe_done(op, value, now)
            else:
                self.recovery.done(op, value, now)
        except FrameError as exc:
            self._fail(StreamError(Code.PROTOCOL_ERROR, str(exc)))

    def get_failed(self, op: GetOp, error: str, now: float) -> None:
        """A get failed at the store; it is retried with backoff."""
        self._ctx.events.append(
            StoreTrouble(f"get of frame {op.index} ({op.purpose.value})", error)
        )
        if op.purpose is Purpose.READ:
            self.receiver.read_failed(op, now)
        elif op.purpose is Purpose.PROBE:
            self.sender.probe_failed(op, now)
        elif op.purpose is Purpose.VERIFY:
            self.sender.verify_failed(op, now)
        else:
            self.recovery.failed(op, now)

    # -- between the halves ------------------------------------------------------------------
    def _build_frames(self, now: float) -> None:
        if self.multicast_reader:
            return
        built = False
        if self.receiver.stop is StopState.PENDING:
            # outside the window, like a bare ack: it must not wait behind our data
            self._build_stop(now)
            built = True
        built = self.sender.build_window(now) or built
        if not built and self.receiver.ack_wanted(now):
            self.sender.build(FrameType.DATA, b"", now)  # a bare ack: outside the window

    def _build_stop(self, now: float) -> None:
        # (goodbye's) after the peer's End or Reset it may have stopped reading: no ack needed
        receiver = self.receiver
        code = struct.pack(">I", receiver.stop_code)
        receiver.stop_built(self.sender.build(FrameType.STOP_SENDING, code, now, receiver.open))

    def _deliver_ready(self, now: float) -> None:
        for frame in self.receiver.deliver_ready(now):
            self._on_peer_signal(frame, now)

    def _on_peer_signal(self, frame: Frame, now: float) -> None:
        """The peer's StopSending resets our direction with its code (unless our End or Reset
        is built); its End or Reset leaves nothing for our StopSending to stop."""
        if frame.type is FrameType.STOP_SENDING:
            assert self.receiver.peer_stop_seen is not None
            self.sender.on_peer_stop(self.receiver.peer_stop_seen)
        else:
            index = self.receiver.direction_ended()
            if index is not None:  # sent: the peer, done writing, may stop reading us
                self.sender.unneed_ack(index, now)
        if self.receiver.peer_done:
            # it reads nothing of ours and acks nothing (it may be gone: a coded close or an
            # abort): our frames are only read back, so we finish without waiting for acks
            self.sender.release(now)

    # -- save / restore ----------------------------------------------------------------------
    def describe(self, now: float) -> str:
        """Two lines on where both directions stand, for a report of a stream that makes no
        progress (what is in flight, what waits, the timers)."""
        return f"{self.sender.describe(now)}\n{self.receiver.describe(now)}"

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume (plain data, for ``persist.seal_state``)."""
        return {
            "v": SNAPSHOT_VERSION,
            "secret": self.secret,
            "role": self.role.value,
            "mode": self.mode.value,
            "value_size": self.params.value_size,
            **self.sender.save(),
            **self.receiver.save(),
        }

    @classmethod
    def from_snapshot(
        cls, state: dict[str, Any], params: StoreParams | None = None, now: float = 0.0
    ) -> StoreCore:
        """Resume from ``snapshot()``; unconfirmed frames are resent at once, after the
        recovery found what the previous run put after the snapshot."""
        saved = SavedState(state)
        try:
            if state.get("v") != SNAPSHOT_VERSION:
                raise ValueError(f"unknown state version {state.get('v')!r}")
            if params is None:
                params = StoreParams(value_size=saved.num("value_size"))
            core = cls(saved.raw("secret"), Role(state["role"]), params, Mode(state["mode"]))
            core.sender.load(saved, now)
            core.receiver.load(saved, now)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"saved stream state is malformed: {exc}") from None
        core.recovery.active = not core.multicast_reader
        return core
