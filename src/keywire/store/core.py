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

import enum
import random
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import Code, StreamError
from .frame import (
    CONTROL_FRAMES,
    NO_ACK,
    Frame,
    FrameError,
    FrameType,
    Geometry,
    open_frame,
    seal_frame,
)
from .ops import (
    DataReceived,
    EndReceived,
    Event,
    FrameRejected,
    GetOp,
    Op,
    Purpose,
    PutOp,
    ReadFailed,
    StoreTrouble,
    WriteFailed,
)
from .params import DEFAULT_VALUE_SIZE, Mode, StoreParams
from .schedule import KeySchedule, Role

__all__ = [
    "DEFAULT_VALUE_SIZE",
    "DataReceived",
    "EndReceived",
    "Event",
    "FrameRejected",
    "GetOp",
    "Mode",
    "Op",
    "Purpose",
    "PutOp",
    "ReadFailed",
    "StoreCore",
    "StoreParams",
    "StoreTrouble",
    "WriteFailed",
]


class _WState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # close_write called; End not built yet
    ENDED = "ended"  # End built
    RESET_PENDING = "reset-pending"
    RESET = "reset"  # Reset built


class _RState(enum.Enum):
    OPEN = "open"
    ENDED = "ended"
    FAILED = "failed"


class _Stop(enum.Enum):
    """Our ``stop_sending``: whether a StopSending frame is owed, sent, or not needed."""

    NONE = "none"  # not called
    LOCAL = "local"  # called when nothing was left to stop (or multicast): local only
    PENDING = "pending"  # the frame is to be built
    SENT = "sent"  # built (at ``_stop_idx``)


class _SState(enum.Enum):
    WAIT_PUT = 0  # to be put at ``due``
    PUTTING = 1
    STORED = 2  # put; awaiting an ack, or read-back at ``due``
    VERIFYING = 3


@dataclass(eq=False)
class _Sent:
    index: int
    address: bytes
    value: bytes
    #: confirmed by the peer's ack (True) or by reading it back (False)
    needs_ack: bool
    state: _SState = _SState.WAIT_PUT
    due: float = 0.0
    transmissions: int = 0
    failures: int = 0
    first_stored: float | None = None
    op: Op | None = None


@dataclass
class _Rtt:
    """RFC 6298's estimator, in seconds."""

    rto: float
    srtt: float | None = None
    rttvar: float = 0.0

    min_rtt: float | None = None

    def sample(self, rtt: float, lo: float, hi: float) -> None:
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(hi, max(lo, self.srtt + max(0.01, 4 * self.rttvar)))


@dataclass
class _ReadSlot:
    """Per-index bookkeeping of the reader's gets."""

    op: GetOp | None = None
    issued: float = 0.0
    due: float = 0.0
    misses: int = 0
    failures: int = 0
    bad: int = 0


SNAPSHOT_VERSION = 1


@dataclass
class StoreCore:
    """One end of a store stream; see the module docstring."""

    secret: bytes
    role: Role
    params: StoreParams = field(default_factory=StoreParams)
    mode: Mode = Mode.DUPLEX

    def __post_init__(self) -> None:
        self.keys = KeySchedule.derive(self.secret, self.role)
        self.geometry = Geometry(self.params.value_size)
        self.capacity = self.geometry.payload_capacity
        p = self.params
        self.ack_every = p.ack_every or max(1, p.window // 2)
        self.max_write_buffer = p.max_write_buffer or p.window * self.capacity
        self.max_read_buffer = p.max_read_buffer or 4 * p.window * self.capacity
        #: largest value accepted from the store (the peer may use another value size)
        self.max_value = max(self.params.value_size, 1 << 20)
        #: puts in flight at once (pipelining)
        self._put_limit = max(p.window, 2)
        self._rng = random.Random(p.seed)
        self._rtt = _Rtt(p.rto_initial)
        self._rto_level = 0
        #: head-of-line probe: read back the oldest unacked frame well before its timeout
        self._probe_ops_hol: dict[int, GetOp] = {}
        self._probe_present = 0
        self._probe_missing = 0
        self._probe_due: float | None = None
        self._probe_backoff = 0
        self._level_ack = -2
        self._level_time = 0.0
        self._events: deque[Event] = deque()
        self._fatal: StreamError | None = None
        # writer
        self._send_buf = bytearray()
        self.bytes_written = 0
        self._write_idx = 0
        self._peer_ack = -1
        self._sent: dict[int, _Sent] = {}
        self._wstate = _WState.OPEN
        self._reset_code = 0
        self._write_error: StreamError | None = None
        self._hello = self.mode is Mode.DUPLEX and self.role is Role.DIALER
        # reader
        self._read_idx = 0
        self._rstate = _RState.OPEN
        self._reorder: dict[int, Frame] = {}
        self._slots: dict[int, _ReadSlot] = {}
        self._ack_sent = -1
        self._pending_acks = 0
        self._ack_due: float | None = None
        self._unconsumed: deque[bytes] = deque()
        self._unconsumed_size = 0
        self.bytes_read = 0
        self._discard_incoming = False
        self._stop = _Stop.NONE
        self._stop_code = 0
        self._stop_idx = -1
        #: the code of the peer's StopSending that reset our direction (None: it did not)
        self._peer_stop: int | None = None
        #: the code of the latest StopSending of the peer read (acted on or not; None: none):
        #: the peer reads nothing more of ours
        self._peer_stop_seen: int | None = None
        #: the code of the peer's Reset, once read (None: no Reset read)
        self.peer_reset_code: int | None = None
        #: the peer is done with both directions (its StopSending and its End or Reset were
        #: read): our frames need no ack from it any more, only a read-back
        self._released = False
        #: ``goodbye(code)``: our direction ends with Reset(code) after its data, not End
        self._end_code = 0
        #: ``goodbye``: the StopSending is sent even when the peer's direction has ended
        self._stop_forced = False
        # restore
        self._recovering = False
        self._recover_op: GetOp | None = None
        self._recover_due = 0.0
        self._recover_failures = 0
        #: after the scan stops at a missing frame: indices beyond it still to probe
        self._probe_todo: set[int] | None = None
        self._probe_ops: dict[int, GetOp] = {}
        self._probe_found = -1
        if self.mode is Mode.MULTICAST and self.role is Role.DIALER:
            self._wstate = _WState.ENDED  # a multicast reader never writes
        if self.mode is Mode.MULTICAST and self.role is Role.LISTENER:
            self._rstate = _RState.ENDED  # nobody writes to a multicast publisher: EOF
            self._events.append(EndReceived())

    # ================================================================================ status
    @property
    def publisher(self) -> bool:
        return self.mode is Mode.MULTICAST and self.role is Role.LISTENER

    @property
    def multicast_reader(self) -> bool:
        return self.mode is Mode.MULTICAST and self.role is Role.DIALER

    @property
    def recovering(self) -> bool:
        return self._recovering

    @property
    def heard_peer(self) -> bool:
        """A frame of the peer has been read (a listener's cue that a dialer arrived)."""
        return self._read_idx > 0 or self._rstate is not _RState.OPEN

    @property
    def failed(self) -> StreamError | None:
        return self._fatal

    @property
    def rto(self) -> float:
        return self._rtt.rto

    @property
    def write_space(self) -> int:
        if self._wstate is not _WState.OPEN or self._recovering:
            return 0
        return max(0, self.max_write_buffer - len(self._send_buf))

    @property
    def flushed(self) -> bool:
        """Every byte written has been put into the store at least once."""
        if self._send_buf or self._wstate in (_WState.CLOSING, _WState.RESET_PENDING):
            return False
        if self._hello:
            return False
        return all(s.transmissions > 0 for s in self._sent.values())

    @property
    def acked(self) -> bool:
        """Flushed, and the peer acknowledged it all (multicast: it reads back from the store)."""
        if not self.flushed:
            return False
        if self.mode is Mode.MULTICAST:
            return not self._sent
        return not any(s.needs_ack for s in self._sent.values())

    @property
    def write_finished(self) -> bool:
        return self._wstate in (_WState.ENDED, _WState.RESET) and self.acked

    @property
    def read_finished(self) -> bool:
        return self._rstate is not _RState.OPEN

    @property
    def quiescent(self) -> bool:
        """Nothing of ours is unconfirmed and nothing we read awaits our ack."""
        return self.acked and not self._sent and self._pending_acks == 0 and not self._recovering

    @property
    def finished(self) -> bool:
        """Both directions ended and everything is confirmed: the stream can stop."""
        if self._fatal is not None:
            return True
        return self.write_finished and self.read_finished and self.quiescent

    def events(self) -> list[Event]:
        out = list(self._events)
        self._events.clear()
        return out

    # ========================================================================== application
    def write(self, data: bytes | memoryview) -> int:
        """Buffer as much of ``data`` as fits; returns how many bytes were taken."""
        self._check_writable()
        n = min(len(data), self.write_space)
        if n:
            self._send_buf += data[:n]
            self.bytes_written += n
        return n

    def _check_writable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._write_error is not None:
            raise self._write_error
        if self.multicast_reader:
            raise StreamError(Code.UNSUPPORTED, "a multicast reader cannot write")
        if self._wstate is _WState.OPEN:
            return
        if self._wstate in (_WState.RESET, _WState.RESET_PENDING):
            raise StreamError(self._reset_code, "stream was reset")
        raise StreamError(Code.CLOSED, "write after close_write")

    def close_write(self) -> None:
        if self._wstate is _WState.OPEN:
            self._wstate = _WState.CLOSING

    def reset(self, code: int) -> None:
        """Abandon our direction: buffered bytes are dropped, the peer's reads fail with code."""
        if self._wstate in (_WState.OPEN, _WState.CLOSING):
            self._send_buf.clear()
            self._reset_code = code
            self._wstate = _WState.RESET_PENDING
            self._write_error = StreamError(code, "stream was reset")

    def stop_sending(self, code: int) -> None:
        """Discard what arrives from now (reads fail with ``code``) and, while the peer's
        direction is open, send it one StopSending(code) so its writes fail and it resets.
        After the peer's End or Reset was read, or as a multicast reader, it is local only."""
        if self._stop is not _Stop.NONE:
            return
        self._discard_incoming = True
        self._stop_code = code & 0xFFFFFFFF
        # (after the peer's End the shell's buffer ignores this if everything was read)
        self._events.append(
            ReadFailed(StreamError(code, "reading was stopped locally"), discard=True)
        )
        remote = self._rstate is _RState.OPEN and self._fatal is None
        self._stop = _Stop.PENDING if remote and not self.multicast_reader else _Stop.LOCAL

    def goodbye(self, code: int) -> None:
        """Close the connection with ``code`` (non-zero): our direction ends with Reset(code)
        after the bytes already written, and a StopSending(code) goes out even if the peer's
        direction has ended, so the peer learns that nobody reads or acks any more and can
        finish without waiting for us."""
        code &= 0xFFFFFFFF
        if self._wstate is _WState.OPEN:
            self._wstate = _WState.CLOSING
            self._end_code = int(code or Code.CLOSED)
        elif self._wstate is _WState.CLOSING and not self._end_code:
            self._end_code = int(code or Code.CLOSED)
        self._force_stop(code)

    def _force_stop(self, code: int) -> None:
        if self.mode is not Mode.DUPLEX or self._fatal is not None:
            return
        if self._stop is _Stop.NONE:
            self.stop_sending(code)
        if self._stop is _Stop.LOCAL:
            self._stop = _Stop.PENDING
        self._stop_forced = True

    def last_words(self, code: int, now: float) -> list[PutOp]:
        """An abort's best-effort notice to the peer: Reset(code) on our direction (if it has
        not ended) and StopSending(code), plus the puts of every frame before them not yet in
        the store, so the peer can read up to them. Nothing if nobody can know of us (we wrote
        nothing and heard nothing), the stream failed, or it is recovering. The core is dead
        after this: the shell stops polling it."""
        if (
            self._fatal is not None
            or self._recovering
            or self.multicast_reader
            or self.finished
            or (self._write_idx == 0 and not self.heard_peer)
        ):
            return []
        self.reset(code)
        self._force_stop(code)
        if self._stop is _Stop.PENDING:
            self._build_stop(now)
        if self._wstate is _WState.RESET_PENDING:
            self._build(FrameType.RESET, struct.pack(">I", self._reset_code & 0xFFFFFFFF), now)
            self._wstate = _WState.RESET
        return [
            PutOp(s.index, s.address, s.value)
            for s in sorted(self._sent.values(), key=lambda s: s.index)
            if s.transmissions == 0 or s.state in (_SState.WAIT_PUT, _SState.PUTTING)
        ]

    def consumed(self, n: int) -> None:
        """The application took ``n`` delivered bytes (frees read buffer, moves ``bytes_read``)."""
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

    # ============================================================================ the engine
    def poll(self, now: float) -> list[Op]:
        """Build due frames and return the store operations to start now."""
        if self._fatal is not None:
            return []
        if self._recovering:
            return self._poll_recover(now)
        if self._reorder:
            try:
                self._deliver_ready(now)  # the application may have made room
            except FrameError as exc:
                self._fail(StreamError(Code.PROTOCOL_ERROR, str(exc)))
                return []
        self._build_frames(now)
        ops: list[Op] = []
        self._poll_sent(now, ops)
        self._poll_probe(now, ops)
        self._poll_reads(now, ops)
        return ops

    def next_deadline(self) -> float | None:
        if self._fatal is not None:
            return None
        if self._recovering:
            idle = self._recover_op is None and not self._probe_ops
            return self._recover_due if idle else None
        putting = sum(1 for s in self._sent.values() if s.state is _SState.PUTTING)
        can_put = putting < self._put_limit
        times = [
            s.due
            for s in self._sent.values()
            if s.state is _SState.STORED or (can_put and s.state is _SState.WAIT_PUT)
        ]
        if self._reading():
            end = self._read_idx + self._read_span()
            times.extend(
                slot.due for index, slot in self._slots.items() if slot.op is None and index < end
            )
        if self._ack_due is not None and self._pending_acks:
            times.append(self._ack_due)
        if self._probe_due is not None and not self._probe_ops_hol and self._head() is not None:
            times.append(self._probe_due)
        return float(min(times)) if times else None

    # -- writer ------------------------------------------------------------------------------
    def _ack_field(self) -> int:
        if self.mode is Mode.MULTICAST or self._read_idx == 0:
            return NO_ACK
        return self._read_idx - 1

    def _window_used(self) -> int:
        if self.mode is Mode.MULTICAST:
            return len(self._sent)
        return sum(1 for s in self._sent.values() if s.needs_ack)

    def _build(self, ftype: FrameType, payload: bytes, now: float) -> None:
        index = self._write_idx
        if ftype is FrameType.DATA and index == 0:
            ftype = FrameType.START
        frame = Frame(ftype, index, self._ack_field(), payload)
        address, value = seal_frame(self.keys.write, frame, self.geometry)
        needs_ack = self.mode is Mode.DUPLEX and frame.elicits_ack and not self._released
        self._sent[index] = _Sent(index, address, value, needs_ack, due=now)
        self._write_idx += 1
        self._hello = False
        if self.mode is Mode.DUPLEX and self._read_idx > 0:
            self._ack_sent = self._read_idx - 1
            self._pending_acks = 0
            self._ack_due = None

    def _build_frames(self, now: float) -> None:
        if self.multicast_reader:
            return
        built = False
        if self._stop is _Stop.PENDING:
            # outside the window, like a bare ack: it must not wait behind our data
            self._build_stop(now)
            built = True
        while self._window_used() < self.params.window:
            state = self._wstate
            if state is _WState.RESET_PENDING:
                self._build(FrameType.RESET, struct.pack(">I", self._reset_code & 0xFFFFFFFF), now)
                self._wstate = _WState.RESET
            elif self._send_buf:
                chunk = bytes(self._send_buf[: self.capacity])
                del self._send_buf[: self.capacity]
                last = state is _WState.CLOSING and not self._send_buf and not self._end_code
                self._build(FrameType.END if last else FrameType.DATA, chunk, now)
                if last:
                    self._wstate = _WState.ENDED
            elif state is _WState.CLOSING and self._end_code:
                self._reset_code = self._end_code
                self._build(FrameType.RESET, struct.pack(">I", self._end_code), now)
                self._wstate = _WState.RESET
            elif state is _WState.CLOSING:
                self._build(FrameType.END, b"", now)
                self._wstate = _WState.ENDED
            elif self._hello:
                self._build(FrameType.START, b"", now)
            else:
                break
            built = True
        if built or self.mode is not Mode.DUPLEX or self._pending_acks == 0:
            return
        if self._pending_acks >= self.ack_every or (
            self._ack_due is not None and now >= self._ack_due
        ):
            self._build(FrameType.DATA, b"", now)  # a bare ack: outside the window

    def _build_stop(self, now: float) -> None:
        self._stop, self._stop_idx = _Stop.SENT, self._write_idx
        self._build(FrameType.STOP_SENDING, struct.pack(">I", self._stop_code), now)
        if self._rstate is not _RState.OPEN:  # (goodbye's) the peer may have stopped reading
            self._sent[self._stop_idx].needs_ack = False

    def _backoff(self, base: float, attempt: int, cap: float) -> float:
        delay: float = min(cap, base * float(2 ** min(attempt, 30)))
        return delay * self._rng.uniform(0.8, 1.2)

    def _poll_sent(self, now: float, ops: list[Op]) -> None:
        putting = sum(1 for s in self._sent.values() if s.state is _SState.PUTTING)
        limit = self._put_limit
        for sent in sorted(self._sent.values(), key=lambda s: s.index):
            if sent.due > now:
                continue
            if sent.state is _SState.WAIT_PUT and putting < limit:
                op: Op = PutOp(sent.index, sent.address, sent.value)
                sent.state, sent.op = _SState.PUTTING, op
                putting += 1
                ops.append(op)
            elif sent.state is _SState.STORED:
                if sent.needs_ack:
                    sent.state = _SState.WAIT_PUT  # retransmission timeout
                    self._timed_out(now)
                    if putting < limit:
                        op = PutOp(sent.index, sent.address, sent.value)
                        sent.state, sent.op = _SState.PUTTING, op
                        putting += 1
                        ops.append(op)
                else:
                    op = GetOp(sent.index, sent.address, 0.0, Purpose.VERIFY)
                    sent.state, sent.op = _SState.VERIFYING, op
                    ops.append(op)

    def _probe_delay(self) -> float:
        # from the smallest round trip seen: a lost ack inflates the smoothed one, and probing
        # early only costs a get (probes that find everything there back off)
        best = self._rtt.min_rtt
        base = 2 * best + self.params.ack_delay if best is not None else self._rtt.rto / 2
        factor = float(2 ** min(self._probe_backoff, 10))
        return max(0.002, min(base, self._rtt.rto / 2)) * factor

    def _head(self) -> _Sent | None:
        """The oldest frame awaiting an ack that has been put (the one the peer waits for)."""
        best: _Sent | None = None
        for sent in self._sent.values():
            if (
                sent.needs_ack
                and sent.state is _SState.STORED
                and (best is None or sent.index < best.index)
            ):
                best = sent
        return best

    def _poll_probe(self, now: float, ops: list[Op]) -> None:
        """Random loss would otherwise cost a whole timeout per lost frame (acks are
        cumulative, so a hole stalls everything after it). When the acks stop advancing for
        about a round trip, the oldest unacked frames (up to 8) are read back; those the store
        lost are put again at once."""
        if self.mode is not Mode.DUPLEX or self._probe_ops_hol:
            return
        if self._head() is None:
            self._probe_due = None
            return
        if self._probe_due is None:
            self._probe_due = now + self._probe_delay()
            return
        if now < self._probe_due:
            return
        stored = sorted(
            (s for s in self._sent.values() if s.needs_ack and s.state is _SState.STORED),
            key=lambda s: s.index,
        )
        for sent in stored[:8]:
            op = GetOp(sent.index, sent.address, 0.0, Purpose.PROBE)
            self._probe_ops_hol[sent.index] = op
            ops.append(op)

    def _probe_done(self, op: GetOp, value: bytes | None, now: float) -> None:
        if self._probe_ops_hol.get(op.index) is not op:
            return
        del self._probe_ops_hol[op.index]
        sent = self._sent.get(op.index)
        if sent is not None and sent.op is None and sent.state is _SState.STORED:
            if value == sent.value:
                self._probe_present += 1
            else:
                sent.state, sent.due = _SState.WAIT_PUT, now
                self._probe_missing += 1
        if not self._probe_ops_hol:
            if self._probe_missing == 0:
                self._probe_backoff += 1  # all there: the peer is slow, not the store
            self._probe_present = self._probe_missing = 0
            self._probe_due = now + self._probe_delay()

    def _timed_out(self, now: float) -> None:
        # back off only while the peer makes no progress at all, once per timeout period: with
        # random loss (acks keep coming) per-frame doubling would stall on every unlucky frame
        if self._peer_ack != self._level_ack:
            self._level_ack, self._level_time = self._peer_ack, now
        elif now >= self._level_time:
            self._rto_level = min(self._rto_level + 1, 12)
            self._level_time = now + self._rtt.rto * (2**self._rto_level) * 0.75

    def put_done(self, op: PutOp, error: str | None, now: float) -> None:
        """The store finished ``op``; ``error`` is None on success."""
        sent = self._sent.get(op.index)
        if sent is None or sent.op is not op:
            return
        sent.op = None
        if error is not None:
            self._events.append(StoreTrouble(f"put of frame {op.index}", error))
            sent.failures += 1
            sent.state = _SState.WAIT_PUT
            sent.due = now + self._backoff(
                self.params.retry_min, sent.failures - 1, self.params.retry_max
            )
            return
        sent.failures = 0
        sent.transmissions += 1
        if sent.first_stored is None:
            sent.first_stored = now
        sent.state = _SState.STORED
        if sent.needs_ack:
            sent.due = now + self._backoff(self._rtt.rto, self._rto_level, self.params.rto_max)
        else:
            # read it back soon: a lost bare ack would stall the peer for a whole timeout
            sent.due = now + self._backoff(
                self.params.verify_delay, sent.transmissions - 1, self.params.rto_max
            )

    def _verified(self, sent: _Sent, value: bytes | None, now: float) -> None:
        if value == sent.value:
            del self._sent[sent.index]
        else:
            sent.state, sent.due = _SState.WAIT_PUT, now

    def _on_peer_ack(self, ack: int, now: float) -> None:
        if ack == NO_ACK or ack <= self._peer_ack:
            return
        if ack >= self._write_idx:
            raise FrameError(
                f"peer acknowledged frame {ack}, but only {self._write_idx} frames were written"
            )
        # Karn's rule, widened: a frame stuck behind a lost one is acked late through no fault
        # of its own, so sample only acks that cover no retransmitted frame
        sample: float | None = None
        clean = True
        for index in range(self._peer_ack + 1, ack + 1):
            sent = self._sent.pop(index, None)
            if sent is None:
                continue
            if sent.transmissions != 1:
                clean = False
            elif sent.needs_ack and sent.first_stored is not None:
                sample = now - sent.first_stored
        self._peer_ack = ack
        self._rto_level = 0
        self._probe_backoff = 0
        self._probe_due = now + self._probe_delay()
        if sample is not None and clean:
            self._rtt.sample(sample, self.params.rto_min, self.params.rto_max)

    # -- reader ------------------------------------------------------------------------------
    def _reading(self) -> bool:
        if self.publisher:
            return False
        if self._rstate is _RState.OPEN:
            # also with a full read buffer: the peer's acks travel in its frames, and an
            # application blocked in write (its window full) would otherwise never read again
            # (data frames then wait in the reorder buffer, at most the read span of them)
            return True
        # the peer ended: keep reading for acks of our frames, and while our direction is open
        # for a StopSending the peer may still send
        return self.mode is Mode.DUPLEX and (self._awaiting_acks() or self._write_open())

    def _awaiting_acks(self) -> bool:
        return any(s.needs_ack for s in self._sent.values())

    def _write_open(self) -> bool:
        """Our direction can still be stopped: its End or Reset is not built yet."""
        return self._wstate in (_WState.OPEN, _WState.CLOSING, _WState.RESET_PENDING)

    def _read_span(self) -> int:
        """Indices read at once. Twice the window: the peer's bare acks sit between its data
        frames, outside its window, and the freshest acks are in its newest frames. After the
        peer's End, with nothing of ours to ack, only a StopSending can come: one get."""
        if self._rstate is not _RState.OPEN and not self._awaiting_acks():
            return 1
        return 2 * self.params.window

    def _poll_reads(self, now: float, ops: list[Op]) -> None:
        if not self._reading():
            return
        for index in range(self._read_idx, self._read_idx + self._read_span()):
            if index in self._reorder:
                continue
            slot = self._slots.get(index)
            if slot is None:
                slot = self._slots[index] = _ReadSlot()
            if slot.op is not None or slot.due > now:
                continue
            op = GetOp(index, self.keys.read.frame_id(index), self.params.get_wait, Purpose.READ)
            slot.op, slot.issued = op, now
            ops.append(op)

    def get_done(self, op: GetOp, value: bytes | None, now: float) -> None:
        """A get returned ``value`` (None: not there before its wait ran out)."""
        if self._fatal is not None:
            return
        try:
            if op.purpose is Purpose.READ:
                self._read_done(op, value, now)
            elif op.purpose is Purpose.VERIFY:
                sent = self._sent.get(op.index)
                if sent is not None and sent.op is op:
                    sent.op = None
                    self._verified(sent, value, now)
            elif op.purpose is Purpose.PROBE:
                self._probe_done(op, value, now)
            else:
                self._recover_done(op, value, now)
        except FrameError as exc:
            self._fail(StreamError(Code.PROTOCOL_ERROR, str(exc)))

    def get_failed(self, op: GetOp, error: str, now: float) -> None:
        """A get failed at the store; it is retried with backoff."""
        self._events.append(StoreTrouble(f"get of frame {op.index} ({op.purpose.value})", error))
        if op.purpose is Purpose.READ:
            slot = self._slots.get(op.index)
            if slot is not None and slot.op is op:
                slot.op = None
                slot.failures += 1
                slot.due = now + self._backoff(
                    self.params.retry_min, slot.failures - 1, self.params.retry_max
                )
        elif op.purpose is Purpose.PROBE:
            if self._probe_ops_hol.get(op.index) is op:
                del self._probe_ops_hol[op.index]
                if not self._probe_ops_hol:
                    self._probe_backoff += 1
                    self._probe_present = self._probe_missing = 0
                    self._probe_due = now + self._probe_delay()
        elif op.purpose is Purpose.VERIFY:
            sent = self._sent.get(op.index)
            if sent is not None and sent.op is op:
                sent.op = None
                sent.failures += 1
                sent.state = _SState.STORED
                sent.due = now + self._backoff(
                    self.params.retry_min, sent.failures - 1, self.params.retry_max
                )
        elif self._recover_op is op or self._probe_ops.get(op.index) is op:
            if self._recover_op is op:
                self._recover_op = None
            else:
                del self._probe_ops[op.index]
                assert self._probe_todo is not None
                self._probe_todo.add(op.index)
            self._recover_failures += 1
            self._recover_due = now + self._backoff(
                self.params.retry_min, self._recover_failures - 1, self.params.retry_max
            )

    def _read_done(self, op: GetOp, value: bytes | None, now: float) -> None:
        slot = self._slots.get(op.index)
        if slot is None or slot.op is not op:
            return
        slot.op = None
        slot.failures = 0
        if value is None:
            # a long poll that came back early (a store without blocking gets) must not spin
            quick = now - slot.issued < op.wait / 2
            slot.misses = slot.misses + 1 if quick else 0
            slot.due = now + (self._backoff(0.005, slot.misses - 1, 0.5) if quick else 0.0)
            return
        try:
            frame = open_frame(self.keys.read, op.index, value, self.max_value)
        except FrameError as exc:
            slot.bad += 1
            self._events.append(FrameRejected(op.index, str(exc)))
            if slot.bad >= self.params.bad_frame_tries:
                self._fail(StreamError(Code.PROTOCOL_ERROR, f"{exc} ({slot.bad} times; giving up)"))
                return
            slot.due = now + self._backoff(
                self.params.retry_min, slot.bad - 1, self.params.retry_max
            )
            return
        del self._slots[op.index]
        if self.mode is Mode.DUPLEX:
            # acks are cumulative and authenticated: use them as they arrive, not in order, so
            # a frame lost in the other direction does not delay them
            self._on_peer_ack(frame.ack, now)
        self._reorder[op.index] = frame
        self._deliver_ready(now)

    def _deliver_ready(self, now: float) -> None:
        """Deliver the frames that are next in order, except data while the read buffer is
        full: those wait in ``_reorder`` (their acks were already used) until the application
        reads, so a full buffer never stops us from hearing acks."""
        while self._read_idx in self._reorder and self._fatal is None:
            frame = self._reorder[self._read_idx]
            if (
                frame.payload
                and frame.type not in CONTROL_FRAMES
                and not self._discard_incoming
                and self._rstate is _RState.OPEN
                and self._unconsumed_size >= self.max_read_buffer
            ):
                return
            del self._reorder[self._read_idx]
            self._deliver(frame, now)

    def _deliver(self, frame: Frame, now: float) -> None:
        index = frame.id
        if frame.type is FrameType.START and index != 0:
            raise FrameError(f"frame {index}: Start frame after frame 0")
        after_end = frame.type in (FrameType.JUMP, FrameType.STOP_SENDING) or (
            frame.type is FrameType.DATA and not frame.payload
        )
        if self._rstate is not _RState.OPEN and not after_end:
            raise FrameError(
                f"frame {index}: {frame.type.name} frame after the peer's "
                f"{'End' if self._rstate is _RState.ENDED else 'Reset'}"
            )
        carries_data = frame.type not in CONTROL_FRAMES
        if frame.payload and carries_data and not self._discard_incoming:
            self._unconsumed.append(frame.payload)
            self._unconsumed_size += len(frame.payload)
            self._events.append(DataReceived(frame.payload))
        if frame.type is FrameType.END:
            self._rstate = _RState.ENDED
            self._events.append(EndReceived())
            self._peer_direction_ended(now)
        elif frame.type is FrameType.RESET:
            if len(frame.payload) != 4:
                raise FrameError(
                    f"frame {index}: Reset payload of {len(frame.payload)} "
                    "bytes, expected a 4-byte code"
                )
            code = struct.unpack(">I", frame.payload)[0]
            self._rstate = _RState.FAILED
            self.peer_reset_code = code
            # after the peer's StopSending with the same code this Reset is its close(code) or
            # abort(code): the bytes before it stay readable, then the code (as QUIC's
            # RESET_STREAM_AT); a bare reset() drops what was not read yet
            self._events.append(
                ReadFailed(
                    StreamError(code, "peer reset the stream", remote=True),
                    discard=self._peer_stop_seen != code,
                )
            )
            self._peer_direction_ended(now)
        elif frame.type is FrameType.STOP_SENDING:
            self._peer_stop_seen = struct.unpack(">I", frame.payload)[0]
            self._on_peer_stop(self._peer_stop_seen)
            self._release(now)
        self._read_idx = index + 1
        if frame.type is FrameType.JUMP:
            target = struct.unpack(">Q", frame.payload)[0] if len(frame.payload) == 8 else 0
            if not index < target <= index + (1 << 20):
                raise FrameError(f"frame {index}: Jump to {target} is not ahead of it")
            for stale in [i for i in self._reorder if i < target]:
                del self._reorder[stale]
            for stale in [i for i in self._slots if i < target]:
                del self._slots[stale]
            self._read_idx = target
        if frame.elicits_ack and self.mode is Mode.DUPLEX:
            self._pending_acks += 1
            if self._ack_due is None:
                self._ack_due = now + self.params.ack_delay

    def _on_peer_stop(self, code: int) -> None:
        """The peer's StopSending: reset our direction with its code, unless our End or Reset
        is already built (then everything we wrote is in frames the peer will ack: ignore)."""
        if self._wstate not in (_WState.OPEN, _WState.CLOSING):
            return
        error = StreamError(code, f"peer asked to stop sending (code {code})", remote=True)
        self._send_buf.clear()
        self._reset_code = code
        self._wstate = _WState.RESET_PENDING
        self._write_error = error
        self._peer_stop = code
        self._events.append(WriteFailed(error))

    def _peer_direction_ended(self, now: float) -> None:
        """Nothing is left to stop: an unbuilt StopSending is dropped, and a sent one need not
        be acked any more (the peer, done writing, may stop reading us), only read back."""
        self._release(now)
        if self._stop is _Stop.PENDING:
            if not self._stop_forced:
                self._stop = _Stop.LOCAL
        elif self._stop is _Stop.SENT:
            sent = self._sent.get(self._stop_idx)
            if sent is not None and sent.needs_ack:
                sent.needs_ack = False
                if sent.state is _SState.STORED:
                    sent.due = now + self.params.verify_delay

    def _release(self, now: float) -> None:
        """Once the peer asked us to stop and its own direction ended, it reads nothing of
        ours and acks nothing (it may be gone: a coded close or an abort): our frames are only
        read back from the store, so we finish without waiting for acks that cannot come."""
        if self._released or self._peer_stop_seen is None or self._rstate is _RState.OPEN:
            return
        self._released = True
        for sent in self._sent.values():
            if sent.needs_ack:
                sent.needs_ack = False
                if sent.state is _SState.STORED:
                    sent.due = now + self.params.verify_delay

    def fail(self, error: StreamError) -> None:
        """End the stream with ``error`` (the shell's verdict, e.g. a value the store refuses)."""
        self._fail(error)

    def _fail(self, error: StreamError) -> None:
        if self._fatal is None:
            self._fatal = error
            self._events.append(ReadFailed(error))
            self._events.append(WriteFailed(error))

    # -- restore -----------------------------------------------------------------------------
    def _poll_recover(self, now: float) -> list[Op]:
        if self._recover_due > now:
            return []
        if self._probe_todo is not None:
            ops: list[Op] = []
            for index in sorted(self._probe_todo):
                op = GetOp(index, self.keys.write.frame_id(index), 0.0, Purpose.RECOVER)
                self._probe_ops[index] = op
                ops.append(op)
            self._probe_todo.clear()
            return ops
        if self._recover_op is not None:
            return []
        index = self._write_idx
        op = GetOp(index, self.keys.write.frame_id(index), 0.0, Purpose.RECOVER)
        self._recover_op = op
        return [op]

    def _recover_done(self, op: GetOp, value: bytes | None, now: float) -> None:
        """Recovery reads our own frames back: first contiguously from the saved index (each
        found frame is adopted), then, past the first missing one, a window's worth beyond
        it: a frame found there was put by the previous run after a lost one, and a reader
        may already hold it, so we must not write other contents at that index."""
        if self._probe_ops.get(op.index) is op:
            del self._probe_ops[op.index]
            if value is not None:
                try:
                    open_frame(self.keys.write, op.index, value, self.max_value)
                    self._probe_found = max(self._probe_found, op.index)
                except FrameError:
                    pass
            if not self._probe_ops and not self._probe_todo:
                self._finish_recovery(now)
            return
        if self._recover_op is not op:
            return
        self._recover_op = None
        self._recover_failures = 0
        frame: Frame | None = None
        if value is not None:
            try:
                frame = open_frame(self.keys.write, op.index, value, self.max_value)
            except FrameError as exc:
                self._events.append(FrameRejected(op.index, f"while recovering: {exc}"))
        if frame is None:
            span = 4 * self.params.window + 8
            self._probe_todo = set(range(op.index + 1, op.index + 1 + span))
            return
        self._adopt(frame, op.address, value or b"", now)

    def _finish_recovery(self, now: float) -> None:
        self._recovering = False
        if self._probe_found >= self._write_idx:
            target = self._probe_found + 1
            self._build(FrameType.JUMP, struct.pack(">Q", target), now)
            self._write_idx = target

    def _adopt(self, frame: Frame, address: bytes, value: bytes, now: float) -> None:
        """A frame our previous run put after the snapshot: take it as written."""
        payload = frame.payload if frame.type not in CONTROL_FRAMES else b""
        known = min(len(payload), len(self._send_buf))
        if bytes(self._send_buf[:known]) != payload[:known]:
            raise FrameError(
                f"frame {frame.id}: recovered frame disagrees with the saved "
                "state (was the state saved by another run?)"
            )
        del self._send_buf[:known]
        self.bytes_written += len(payload) - known
        if frame.type is FrameType.END:
            self._wstate = _WState.ENDED
        elif frame.type is FrameType.RESET:
            self._wstate = _WState.RESET
        needs_ack = self.mode is Mode.DUPLEX and frame.elicits_ack
        if frame.type is FrameType.STOP_SENDING:
            self._adopt_stop(frame)
            needs_ack = needs_ack and self._rstate is _RState.OPEN
        sent = _Sent(
            frame.id,
            address,
            value,
            needs_ack,
            state=_SState.STORED,
            due=now + self._rtt.rto,
            transmissions=1,
        )
        self._sent[frame.id] = sent
        self._write_idx = frame.id + 1
        if frame.type is FrameType.JUMP and len(frame.payload) == 8:
            self._write_idx = struct.unpack(">Q", frame.payload)[0]
        self._hello = False

    def _adopt_stop(self, frame: Frame) -> None:
        """Our previous run sent this StopSending after the snapshot: it stands."""
        if self._stop is _Stop.NONE:
            self._stop_code = struct.unpack(">I", frame.payload)[0]
            self._discard_incoming = True
            if self._rstate is _RState.OPEN:
                self._events.append(
                    ReadFailed(
                        StreamError(self._stop_code, "reading was stopped locally"), discard=True
                    )
                )
        self._stop, self._stop_idx = _Stop.SENT, frame.id

    # -- save / restore ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume (plain data, for ``persist.seal_state``)."""
        return {
            "v": SNAPSHOT_VERSION,
            "secret": self.secret,
            "role": self.role.value,
            "mode": self.mode.value,
            "value_size": self.params.value_size,
            "write_idx": self._write_idx,
            "peer_ack": self._peer_ack,
            "bytes_written": self.bytes_written,
            "send_buf": bytes(self._send_buf),
            "wstate": self._wstate.value,
            "reset_code": self._reset_code,
            "hello": self._hello,
            "sent": [
                [s.index, s.address, s.value, s.needs_ack, s.transmissions > 0]
                for s in sorted(self._sent.values(), key=lambda s: s.index)
            ],
            "read_idx": self._read_idx,
            "rstate": self._rstate.value,
            "ack_sent": self._ack_sent,
            "pending_acks": self._pending_acks,
            "bytes_read": self.bytes_read,
            "unconsumed": b"".join(self._unconsumed),
            "rto": self._rtt.rto,
            # added with StopSending; optional, so states saved before it still load
            "stop": self._stop.value,
            "stop_code": self._stop_code,
            "stop_idx": self._stop_idx,
            "peer_stop": -1 if self._peer_stop is None else self._peer_stop,
            # added with goodbye (coded close); optional as well
            "end_code": self._end_code,
            "stop_forced": self._stop_forced,
            "peer_stop_seen": -1 if self._peer_stop_seen is None else self._peer_stop_seen,
            "released": self._released,
        }

    @classmethod
    def from_snapshot(
        cls, state: dict[str, Any], params: StoreParams | None = None, now: float = 0.0
    ) -> StoreCore:
        """Resume from ``snapshot()``; unconfirmed frames are resent at once."""

        def num(name: str, default: int | None = None) -> int:
            value = state[name] if default is None else state.get(name, default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} is not an integer")
            return value

        def raw(name: str, value: object = None) -> bytes:
            value = state[name] if value is None else value
            if not isinstance(value, bytes):
                raise TypeError(f"{name} is not bytes")
            return value

        try:
            if state.get("v") != SNAPSHOT_VERSION:
                raise ValueError(f"unknown state version {state.get('v')!r}")
            if params is None:
                params = StoreParams(value_size=num("value_size"))
            core = cls(raw("secret"), Role(state["role"]), params, Mode(state["mode"]))
            core._write_idx = num("write_idx")
            core._peer_ack = num("peer_ack")
            core.bytes_written = num("bytes_written")
            core._send_buf = bytearray(raw("send_buf"))
            core._wstate = _WState(state["wstate"])
            core._reset_code = num("reset_code")
            core._hello = bool(state["hello"])
            for entry in state["sent"]:
                index, address, value, needs_ack, _was_put = entry
                if not isinstance(index, int):
                    raise TypeError("a saved frame index is not an integer")
                core._sent[index] = _Sent(
                    index, raw("sent", address), raw("sent", value), bool(needs_ack), due=now
                )
            core._read_idx = num("read_idx")
            core._rstate = _RState(state["rstate"])
            core._ack_sent = num("ack_sent")
            core._pending_acks = num("pending_acks")
            core.bytes_read = num("bytes_read")
            unconsumed = raw("unconsumed")
            rto = state["rto"]
            if not isinstance(rto, int | float):
                raise TypeError("rto is not a number")
            core._rtt.rto = float(rto)
            core._stop = _Stop(state.get("stop", _Stop.NONE.value))
            core._stop_code = num("stop_code", 0)
            core._stop_idx = num("stop_idx", -1)
            peer_stop = num("peer_stop", -1)
            core._end_code = num("end_code", 0)
            core._stop_forced = bool(state.get("stop_forced", False))
            seen = num("peer_stop_seen", -1)
            core._peer_stop_seen = None if seen < 0 else seen
            core._released = bool(state.get("released", False))
            if (
                not -1 <= peer_stop <= 0xFFFFFFFF
                or not 0 <= core._stop_code <= 0xFFFFFFFF
                or not 0 <= core._end_code <= 0xFFFFFFFF
            ):
                raise ValueError("a saved StopSending code is out of range")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"saved stream state is malformed: {exc}") from None
        if core._wstate is _WState.RESET_PENDING or core._wstate is _WState.RESET:
            core._write_error = StreamError(core._reset_code, "stream was reset")
            if peer_stop >= 0:
                core._peer_stop = peer_stop
                core._write_error = StreamError(
                    peer_stop, f"peer asked to stop sending (code {peer_stop})", remote=True
                )
        if core._pending_acks:
            core._ack_due = now
        if unconsumed:
            core._unconsumed.append(unconsumed)
            core._unconsumed_size = len(unconsumed)
            core._events.append(DataReceived(unconsumed))
        if core._stop is not _Stop.NONE:  # reading stays stopped (before any End: reads fail)
            core._discard_incoming = True
            core._events.append(
                ReadFailed(
                    StreamError(core._stop_code, "reading was stopped locally"), discard=True
                )
            )
        if core._rstate is _RState.ENDED and not core.publisher:
            core._events.append(EndReceived())
        elif core._rstate is _RState.FAILED:
            core._events.append(
                ReadFailed(StreamError(Code.RESET, "peer reset the stream", remote=True))
            )
        core._recovering = not core.multicast_reader
        return core
