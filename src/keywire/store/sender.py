"""The sending half of a store stream: our direction's frames, from ``write`` to confirmation.

It cuts the bytes into frames, keeps at most ``window`` frames that need an acknowledgement
outstanding (all put at once), resends a frame when its retransmission timeout expires (RFC
6298 estimator, Karn's rule, backoff only while the peer makes no progress), reads back the
oldest unacked frames when acks stall (the head-of-line probe) and confirms frames nobody
acknowledges by reading them back. The ack field of every frame comes from the receiver
(``AckSource``); what the peer's frames say about ours (its ack, its StopSending) arrives
through the façade, ``StoreCore``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from .. import events as ev
from ..errors import Code, StreamError
from .context import SavedState, StreamContext, as_bytes
from .frame import CONTROL_FRAMES, NO_ACK, Frame, FrameError, FrameType, seal_frame
from .ops import GetOp, Op, Purpose, PutOp, StoreTrouble
from .schedule import Role


class WriteState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # close_write called; End not built yet
    ENDED = "ended"  # End built
    RESET_PENDING = "reset-pending"
    RESET = "reset"  # Reset built


class SentState(enum.Enum):
    WAIT_PUT = 0  # to be put at ``due``
    PUTTING = 1
    STORED = 2  # put; awaiting an ack, or read-back at ``due``
    VERIFYING = 3


@dataclass(eq=False)
class Sent:
    """One frame we built, until the peer acks it or a read-back finds it stored."""

    index: int
    address: bytes
    value: bytes
    #: confirmed by the peer's ack (True) or by reading it back (False)
    needs_ack: bool
    state: SentState = SentState.WAIT_PUT
    due: float = 0.0
    transmissions: int = 0
    failures: int = 0
    first_stored: float | None = None
    op: Op | None = None


@dataclass
class Rtt:
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


class AckSource(Protocol):
    """The receiver, as the sender sees it: every frame we build carries its ack."""

    def ack_field(self) -> int:
        """The ``Ack`` to put in a frame built now."""
        ...

    def ack_built(self) -> None:
        """A frame carrying ``ack_field()`` was built: nothing is left to acknowledge."""
        ...


class StoreSender:
    """Our direction of one store stream; see the module docstring."""

    def __init__(self, ctx: StreamContext, acks: AckSource) -> None:
        p = ctx.params
        self._ctx = ctx
        self._acks = acks
        self.max_write_buffer = p.max_write_buffer or p.window * ctx.capacity
        #: puts in flight at once (pipelining)
        self._put_limit = max(p.window, 2)
        self.rtt = Rtt(p.rto_initial)
        self._rto_level = 0
        self._level_ack = -2
        self._level_time = 0.0
        #: head-of-line probe: read back the oldest unacked frame well before its timeout
        self._probe_ops: dict[int, GetOp] = {}
        self._probe_present = 0
        self._probe_missing = 0
        self._probe_due: float | None = None
        self._probe_backoff = 0
        #: ``peer_ack`` when the last probe round ended
        self._probe_ack = -1
        self.send_buf = bytearray()
        self.bytes_written = 0
        self.write_idx = 0
        self.peer_ack = -1
        self.sent: dict[int, Sent] = {}
        self.state = WriteState.ENDED if ctx.multicast_reader else WriteState.OPEN
        self.reset_code = 0
        self.write_error: StreamError | None = None
        #: a duplex dialer announces itself with an empty Start frame
        self.hello = ctx.duplex and ctx.role is Role.DIALER
        #: the code of the peer's StopSending that reset our direction (None: it did not)
        self.peer_stop: int | None = None
        #: the peer reads and acks nothing more: our frames are only read back
        self.released = False
        #: ``goodbye(code)``: our direction ends with Reset(code) after its data, not End
        self.end_code = 0

    # ============================================================================== status
    def describe(self, now: float) -> str:
        """One line on where our direction stands (for a stall report): frames in flight by
        state with their transmissions and seconds until due, the timer levels."""
        frames = " ".join(
            f"{sent.index}:{sent.state.name.lower()}"
            f"{'' if sent.needs_ack else '(bare)'}"
            f"x{sent.transmissions}/f{sent.failures}@{sent.due - now:+.1f}"
            for sent in sorted(self.sent.values(), key=lambda s: s.index)[:12]
        )
        probe = "-" if self._probe_due is None else f"{self._probe_due - now:+.1f}"
        return (
            f"write {self.state.name.lower()} idx {self.write_idx} peer_ack {self.peer_ack} "
            f"buffered {len(self.send_buf)} rto {self.rtt.rto:.3f} level {self._rto_level} "
            f"probe {probe}/backoff {self._probe_backoff}/{len(self._probe_ops)} out; "
            f"{len(self.sent)} unconfirmed: {frames}"
        )

    def space(self) -> int:
        if self.state is not WriteState.OPEN:
            return 0
        return max(0, self.max_write_buffer - len(self.send_buf))

    @property
    def flushed(self) -> bool:
        """Every byte written has been put into the store at least once."""
        if self.send_buf or self.state in (WriteState.CLOSING, WriteState.RESET_PENDING):
            return False
        if self.hello:
            return False
        return all(s.transmissions > 0 for s in self.sent.values())

    @property
    def acked(self) -> bool:
        """Flushed, and the peer acknowledged it all (multicast: it reads back from the store)."""
        if not self.flushed:
            return False
        if not self._ctx.duplex:
            return not self.sent
        return not self.awaiting_acks

    @property
    def finished(self) -> bool:
        return self.state in (WriteState.ENDED, WriteState.RESET) and self.acked

    @property
    def awaiting_acks(self) -> bool:
        return any(s.needs_ack for s in self.sent.values())

    @property
    def stoppable(self) -> bool:
        """Our direction can still be stopped: its End or Reset is not built yet."""
        return self.state in (WriteState.OPEN, WriteState.CLOSING, WriteState.RESET_PENDING)

    # ========================================================================= application
    def check_writable(self) -> None:
        if self.write_error is not None:
            raise self.write_error
        if self._ctx.multicast_reader:
            raise StreamError(Code.UNSUPPORTED, "a multicast reader cannot write")
        if self.state is WriteState.OPEN:
            return
        if self.state in (WriteState.RESET, WriteState.RESET_PENDING):
            raise StreamError(self.reset_code, "stream was reset")
        raise StreamError(Code.CLOSED, "write after close_write")

    def append(self, data: bytes | memoryview) -> None:
        self.send_buf += data
        self.bytes_written += len(data)

    def close(self) -> None:
        if self.state is WriteState.OPEN:
            self.state = WriteState.CLOSING

    def reset(self, code: int) -> None:
        if self.state in (WriteState.OPEN, WriteState.CLOSING):
            self.send_buf.clear()
            self.reset_code = code
            self.state = WriteState.RESET_PENDING
            self.write_error = StreamError(code, "stream was reset")

    def goodbye(self, code: int) -> None:
        """End with Reset(``code``) after the bytes already written."""
        if self.state is WriteState.OPEN:
            self.state = WriteState.CLOSING
            self.end_code = int(code or Code.CLOSED)
        elif self.state is WriteState.CLOSING and not self.end_code:
            self.end_code = int(code or Code.CLOSED)

    # ===================================================================== what the peer said
    def on_peer_stop(self, code: int) -> None:
        """The peer's StopSending: reset our direction with its code, unless our End or Reset
        is already built (then everything we wrote is in frames the peer will ack: ignore)."""
        if self.state not in (WriteState.OPEN, WriteState.CLOSING):
            return
        error = StreamError(code, f"peer asked to stop sending (code {code})", remote=True)
        self.send_buf.clear()
        self.reset_code = code
        self.state = WriteState.RESET_PENDING
        self.write_error = error
        self.peer_stop = code
        self._ctx.events.append(ev.StopSendingReceived(0, code))

    def on_peer_ack(self, ack: int, now: float) -> None:
        if ack == NO_ACK or ack <= self.peer_ack:
            return
        if ack >= self.write_idx:
            raise FrameError(
                f"peer acknowledged frame {ack}, but only {self.write_idx} frames were written"
            )
        # Karn's rule, widened: a frame stuck behind a lost one is acked late through no fault
        # of its own, so sample only acks that cover no retransmitted frame
        sample: float | None = None
        clean = True
        for index in range(self.peer_ack + 1, ack + 1):
            sent = self.sent.pop(index, None)
            if sent is None:
                continue
            if sent.transmissions != 1:
                clean = False
            elif sent.needs_ack and sent.first_stored is not None:
                sample = now - sent.first_stored
        self.peer_ack = ack
        self._rto_level = 0
        self._probe_backoff = 0
        self._probe_due = now + self._probe_delay()
        if sample is not None and clean:
            self.rtt.sample(sample, self._ctx.params.rto_min, self._ctx.params.rto_max)

    def release(self, now: float) -> None:
        """The peer reads and acks nothing more: every frame is confirmed by a read-back."""
        if self.released:
            return
        self.released = True
        for index in list(self.sent):
            self.unneed_ack(index, now)

    def unneed_ack(self, index: int, now: float) -> None:
        sent = self.sent.get(index)
        if sent is not None and sent.needs_ack:
            sent.needs_ack = False
            if sent.state is SentState.STORED:
                sent.due = now + self._ctx.params.verify_delay

    # ============================================================================== frames
    def build(self, ftype: FrameType, payload: bytes, now: float, ack_ok: bool = True) -> int:
        """Seal the next frame (``ack_ok`` False: confirm it by read-back only); its index."""
        index = self.write_idx
        if ftype is FrameType.DATA and index == 0:
            ftype = FrameType.START
        frame = Frame(ftype, index, self._acks.ack_field(), payload)
        address, value = seal_frame(self._ctx.keys.write, frame, self._ctx.geometry)
        needs_ack = self._ctx.duplex and frame.elicits_ack and not self.released and ack_ok
        self.sent[index] = Sent(index, address, value, needs_ack, due=now)
        self.write_idx += 1
        self.hello = False
        self._acks.ack_built()
        return index

    def _window_used(self) -> int:
        if not self._ctx.duplex:
            return len(self.sent)
        return sum(1 for s in self.sent.values() if s.needs_ack)

    def build_window(self, now: float) -> bool:
        """Build the frames the window allows; whether any was built."""
        built = False
        while self._window_used() < self._ctx.params.window:
            state = self.state
            if state is WriteState.RESET_PENDING:
                self.build_reset(now)
            elif self.send_buf:
                capacity = self._ctx.capacity
                chunk = bytes(self.send_buf[:capacity])
                del self.send_buf[:capacity]
                last = state is WriteState.CLOSING and not self.send_buf and not self.end_code
                self.build(FrameType.END if last else FrameType.DATA, chunk, now)
                if last:
                    self.state = WriteState.ENDED
            elif state is WriteState.CLOSING and self.end_code:
                self.reset_code = self.end_code
                self.build(FrameType.RESET, struct.pack(">I", self.end_code), now)
                self.state = WriteState.RESET
            elif state is WriteState.CLOSING:
                self.build(FrameType.END, b"", now)
                self.state = WriteState.ENDED
            elif self.hello:
                self.build(FrameType.START, b"", now)
            else:
                break
            built = True
        return built

    def build_reset(self, now: float) -> None:
        self.build(FrameType.RESET, struct.pack(">I", self.reset_code & 0xFFFFFFFF), now)
        self.state = WriteState.RESET

    def jump(self, target: int, now: float) -> None:
        """Skip indices ``write_idx .. target - 1`` (a hole our previous run left)."""
        self.build(FrameType.JUMP, struct.pack(">Q", target), now)
        self.write_idx = target

    def unput(self) -> list[PutOp]:
        """The puts of every frame not in the store yet (an abort's last words)."""
        return [
            PutOp(s.index, s.address, s.value)
            for s in sorted(self.sent.values(), key=lambda s: s.index)
            if s.transmissions == 0 or s.state in (SentState.WAIT_PUT, SentState.PUTTING)
        ]

    # ========================================================================== store ops
    def poll(self, now: float, ops: list[Op]) -> None:
        self._poll_sent(now, ops)
        self._poll_probe(now, ops)

    def deadlines(self) -> list[float]:
        putting = sum(1 for s in self.sent.values() if s.state is SentState.PUTTING)
        can_put = putting < self._put_limit
        times = [
            s.due
            for s in self.sent.values()
            if s.state is SentState.STORED or (can_put and s.state is SentState.WAIT_PUT)
        ]
        if self._probe_due is not None and not self._probe_ops and self._head() is not None:
            times.append(self._probe_due)
        return times

    def _poll_sent(self, now: float, ops: list[Op]) -> None:
        putting = sum(1 for s in self.sent.values() if s.state is SentState.PUTTING)
        limit = self._put_limit
        for sent in sorted(self.sent.values(), key=lambda s: s.index):
            if sent.due > now:
                continue
            if sent.state is SentState.WAIT_PUT and putting < limit:
                op: Op = PutOp(sent.index, sent.address, sent.value)
                sent.state, sent.op = SentState.PUTTING, op
                putting += 1
                ops.append(op)
            elif sent.state is SentState.STORED:
                if sent.needs_ack:
                    sent.state = SentState.WAIT_PUT  # retransmission timeout
                    self._timed_out(now)
                    if putting < limit:
                        op = PutOp(sent.index, sent.address, sent.value)
                        sent.state, sent.op = SentState.PUTTING, op
                        putting += 1
                        ops.append(op)
                else:
                    op = GetOp(sent.index, sent.address, 0.0, Purpose.VERIFY)
                    sent.state, sent.op = SentState.VERIFYING, op
                    ops.append(op)

    def _timed_out(self, now: float) -> None:
        # back off only while the peer makes no progress at all, once per timeout period: with
        # random loss (acks keep coming) per-frame doubling would stall on every unlucky frame
        if self.peer_ack != self._level_ack:
            self._level_ack, self._level_time = self.peer_ack, now
        elif now >= self._level_time:
            self._rto_level = min(self._rto_level + 1, 12)
            self._level_time = now + self.rtt.rto * (2**self._rto_level) * 0.75

    def put_done(self, op: PutOp, error: str | None, now: float) -> None:
        sent = self.sent.get(op.index)
        if sent is None or sent.op is not op:
            return
        sent.op = None
        p = self._ctx.params
        if error is not None:
            self._ctx.events.append(StoreTrouble(f"put of frame {op.index}", error))
            sent.failures += 1
            sent.state = SentState.WAIT_PUT
            sent.due = self._ctx.retry_at(now, sent.failures)
            return
        sent.failures = 0
        sent.transmissions += 1
        if sent.first_stored is None:
            sent.first_stored = now
        sent.state = SentState.STORED
        if sent.needs_ack:
            sent.due = now + self._ctx.backoff(self.rtt.rto, self._rto_level, p.rto_max)
        else:
            # read it back soon: a lost bare ack would stall the peer for a whole timeout
            sent.due = now + self._ctx.backoff(p.verify_delay, sent.transmissions - 1, p.rto_max)

    def verify_done(self, op: GetOp, value: bytes | None, now: float) -> None:
        sent = self.sent.get(op.index)
        if sent is None or sent.op is not op:
            return
        sent.op = None
        if value == sent.value:
            del self.sent[sent.index]
        else:
            sent.state, sent.due = SentState.WAIT_PUT, now

    def verify_failed(self, op: GetOp, now: float) -> None:
        sent = self.sent.get(op.index)
        if sent is not None and sent.op is op:
            sent.op = None
            sent.failures += 1
            sent.state = SentState.STORED
            sent.due = self._ctx.retry_at(now, sent.failures)

    # -- head-of-line probe ------------------------------------------------------------------
    def _probe_delay(self) -> float:
        # from the smallest round trip seen: a lost ack inflates the smoothed one, and probing
        # early only costs a get (probes that find everything there back off)
        best = self.rtt.min_rtt
        base = 2 * best + self._ctx.params.ack_delay if best is not None else self.rtt.rto / 2
        factor = float(2 ** min(self._probe_backoff, 10))
        return max(0.002, min(base, self.rtt.rto / 2)) * factor

    def _head(self) -> Sent | None:
        """The oldest frame awaiting an ack that has been put (the one the peer waits for)."""
        best: Sent | None = None
        for sent in self.sent.values():
            if (
                sent.needs_ack
                and sent.state is SentState.STORED
                and (best is None or sent.index < best.index)
            ):
                best = sent
        return best

    def _poll_probe(self, now: float, ops: list[Op]) -> None:
        """Random loss would otherwise cost a whole timeout per lost frame (acks are
        cumulative, so a hole stalls everything after it). When the acks stop advancing for
        about a round trip, the oldest unacked frames (up to 8) are read back; those the store
        lost are put again at once."""
        if not self._ctx.duplex or self._probe_ops:
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
            (s for s in self.sent.values() if s.needs_ack and s.state is SentState.STORED),
            key=lambda s: s.index,
        )
        for sent in stored[:8]:
            op = GetOp(sent.index, sent.address, 0.0, Purpose.PROBE)
            self._probe_ops[sent.index] = op
            ops.append(op)

    def probe_done(self, op: GetOp, value: bytes | None, now: float) -> None:
        if self._probe_ops.get(op.index) is not op:
            return
        del self._probe_ops[op.index]
        sent = self.sent.get(op.index)
        if sent is not None and sent.op is None and sent.state is SentState.STORED:
            if value == sent.value:
                self._probe_present += 1
            else:
                sent.state, sent.due = SentState.WAIT_PUT, now
                self._probe_missing += 1
        if not self._probe_ops:
            # all there: the peer is slow, not the store; frames missing again with no ack
            # since the last round: the store loses what we put, and re-putting at probe
            # pace would hammer it (an ack sets the backoff back to 0)
            if self._probe_missing == 0 or self.peer_ack == self._probe_ack:
                self._probe_backoff += 1
            self._probe_ack = self.peer_ack
            self._probe_present = self._probe_missing = 0
            self._probe_due = now + self._probe_delay()

    def probe_failed(self, op: GetOp, now: float) -> None:
        if self._probe_ops.get(op.index) is op:
            del self._probe_ops[op.index]
            if not self._probe_ops:
                self._probe_backoff += 1
                self._probe_present = self._probe_missing = 0
                self._probe_due = now + self._probe_delay()

    # ========================================================================== recovery
    def adopt(
        self, frame: Frame, address: bytes, value: bytes, needs_ack: bool, now: float
    ) -> None:
        """A frame our previous run put after the snapshot: take it as written."""
        payload = frame.payload if frame.type not in CONTROL_FRAMES else b""
        known = min(len(payload), len(self.send_buf))
        if bytes(self.send_buf[:known]) != payload[:known]:
            raise FrameError(
                f"frame {frame.id}: recovered frame disagrees with the saved "
                "state (was the state saved by another run?)"
            )
        del self.send_buf[:known]
        self.bytes_written += len(payload) - known
        if frame.type is FrameType.END:
            self.state = WriteState.ENDED
        elif frame.type is FrameType.RESET:
            self.state = WriteState.RESET
        self.sent[frame.id] = Sent(
            frame.id,
            address,
            value,
            needs_ack,
            state=SentState.STORED,
            due=now + self.rtt.rto,
            transmissions=1,
        )
        self.write_idx = frame.id + 1
        if frame.type is FrameType.JUMP and len(frame.payload) == 8:
            self.write_idx = struct.unpack(">Q", frame.payload)[0]
        self.hello = False

    def save(self) -> dict[str, Any]:
        return {
            "write_idx": self.write_idx,
            "peer_ack": self.peer_ack,
            "bytes_written": self.bytes_written,
            "send_buf": bytes(self.send_buf),
            "wstate": self.state.value,
            "reset_code": self.reset_code,
            "hello": self.hello,
            "sent": [
                [s.index, s.address, s.value, s.needs_ack, s.transmissions > 0]
                for s in sorted(self.sent.values(), key=lambda s: s.index)
            ],
            "rto": self.rtt.rto,
            "peer_stop": -1 if self.peer_stop is None else self.peer_stop,
            "end_code": self.end_code,
            "released": self.released,
        }

    def load(self, saved: SavedState, now: float) -> None:
        """Resume from ``save()``; every saved frame is put again at ``now``."""
        self.write_idx = saved.num("write_idx")
        self.peer_ack = saved.num("peer_ack")
        self.bytes_written = saved.num("bytes_written")
        self.send_buf = bytearray(saved.raw("send_buf"))
        self.state = WriteState(saved["wstate"])
        self.reset_code = saved.num("reset_code")
        self.hello = bool(saved["hello"])
        for entry in saved["sent"]:
            index, address, value, needs_ack, _was_put = entry
            if not isinstance(index, int):
                raise TypeError("a saved frame index is not an integer")
            self.sent[index] = Sent(
                index, as_bytes(address, "sent"), as_bytes(value, "sent"), bool(needs_ack), due=now
            )
        rto = saved["rto"]
        if not isinstance(rto, int | float):
            raise TypeError("rto is not a number")
        self.rtt.rto = float(rto)
        peer_stop = saved.code("peer_stop", -1, low=-1)
        self.end_code = saved.code("end_code", 0)
        self.released = bool(saved.get("released", False))
        if self.state in (WriteState.RESET_PENDING, WriteState.RESET):
            self.write_error = StreamError(self.reset_code, "stream was reset")
            if peer_stop >= 0:
                self.peer_stop = peer_stop
                self.write_error = StreamError(
                    peer_stop, f"peer asked to stop sending (code {peer_stop})", remote=True
                )
