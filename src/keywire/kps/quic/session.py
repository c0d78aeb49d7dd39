"""The sans-IO core of one KPS connection: qh3's QUIC state plus KPS's stream lifecycle.

``KpsSession`` takes datagrams, timer ticks and application commands, and returns datagrams to
send, ``SessionEvent``s and its next deadline. It never touches a socket or the event loop, so
every mapping rule of KPS §2.4 is testable by moving bytes between two sessions by hand:

=====================  ==========================================
KPS operation          QUIC frame
=====================  ==========================================
close_write            FIN
stop_sending(c)        STOP_SENDING(c)
reset(c)               RESET_STREAM(c)
peer STOP_SENDING(c)   writes fail; RESET_STREAM(c) (qh3 sends it)
close(c)               CONNECTION_CLOSE, application code c
=====================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qh3.quic import events as qe
from qh3.quic.connection import QuicConnectionError

from ...errors import Code, ConnectionClosed, DatagramTooLarge, StreamError
from ...events import (
    ConnectionTerminated,
    DatagramReceived,
    Event,
    HandshakeCompleted,
    StopSendingReceived,
    StreamClosed,
    StreamData,
    StreamOpened,
    StreamReset,
)
from .configuration import GatedQuicConnection

if TYPE_CHECKING:
    from ...core import DatagramCore

Address = tuple[Any, ...]

#: worst-case bytes around a DATAGRAM payload in a 1-RTT packet: first byte, a 20-byte
#: destination connection id, a 4-byte packet number, the 16-byte AEAD tag, frame type + length
DATAGRAM_OVERHEAD = 1 + 20 + 4 + 16 + 3
#: QUIC transport error CONNECTION_REFUSED (RFC 9000 §20.1)
CONNECTION_REFUSED = 0x2
#: bytes of stream data and datagrams a dialer hands qh3 between TLS completion and the server's
#: HANDSHAKE_DONE (more waits in ``KpsSession._held``): a quarter of qh3's initial congestion
#: window (15,360 bytes), so a lost Finished's retransmission always has room (see ``_collect``)
EARLY_BYTES = 4096
#: ``_held`` entries with this stream id are datagrams
_DATAGRAM = -1
#: stream data handed to qh3 for one stream at a time while several streams have data to send
#: (see ``_take_turn``): ~48 full packets, which the peer's qh3 reports as one event
TURN_BYTES = 64 << 10


# -- events: the shared vocabulary (``keywire.events``), under the names this module had ----
#: what a session reports to its shell
SessionEvent = Event
HandshakeDone = HandshakeCompleted
StopSending = StopSendingReceived
#: the connection ended; ``kind`` is application, transport or timeout
Closed = ConnectionTerminated


@dataclass(frozen=True)
class ConnectionIdChanged:
    """A local connection id was issued (``added``) or retired; the dispatcher routes by them.
    KPS-only, so not an event: queued on ``KpsSession.cid_changes`` for the adapter."""

    cid: bytes
    added: bool


# -- per-stream bookkeeping ------------------------------------------------------------------------
@dataclass
class _Halves:
    send_open: bool = True
    recv_open: bool = True
    #: the application stopped reading: later data is dropped, not buffered
    discarding: bool = False


def transport_code(error_code: int) -> Code:
    """Map a QUIC transport error to the registry (refusal, timeout and the rest)."""
    if error_code == 0:
        return Code.NONE
    if error_code == CONNECTION_REFUSED:
        return Code.QUEUE_FULL
    if error_code == 0x1:
        return Code.INTERNAL_ERROR
    return Code.PROTOCOL_ERROR


class KpsSession:
    """One KPS connection, sans-IO. All times are the caller's monotonic clock in seconds."""

    def __init__(
        self, quic: GatedQuicConnection, *, connection_window: int, max_backlog: int = 100
    ) -> None:
        self.quic = quic
        #: peer streams announced but not yet accepted by the application; at ``max_backlog``
        #: events are held like unread bytes (a peer cannot pile up empty streams)
        self.backlog = 0
        self._max_backlog = max_backlog
        self.is_client = quic.configuration.is_client
        self._window = connection_window
        # lists, not deques: an empty deque is 760 bytes and these are short (issue 17)
        self._events: list[Event] = []
        #: connection ids issued or retired, for the listener's router (not shell events)
        self.cid_changes: list[ConnectionIdChanged] = []
        self._streams: dict[int, _Halves] = {}
        self._unread = 0
        self._local_close: ConnectionClosed | None = None
        self._local_reason = ""
        self.closed: Closed | None = None
        self.handshake_done = False
        self._in_timer = False
        self._ping_uid = 0
        #: times qh3 failed to build a handshake flight (see ``datagrams_to_send``)
        self.first_flight_errors = 0
        self._tls_complete = False
        self._alpn: str | None = None
        # peer streams: ids below ``_next_peer`` were announced, except those in ``_skipped``
        # (a peer may send on stream 8 before stream 4; QUIC opens 4 implicitly)
        # (a list indexed by "unidirectional", and the set made when first needed: a dict and an
        # empty set are 0.4 KB of every idle connection)
        self._next_peer = [1, 3] if self.is_client else [0, 2]
        self._skipped: set[int] | None = None
        #: stream data queued since everything was last known delivered may ride only in
        #: 1-RTT packets numbered above this (None: nothing written since; see
        #: ``all_acknowledged``)
        self._written_after: int | None = None
        #: qh3's count of lost packets when ``all_acknowledged`` last looked
        self._losses = 0
        #: a dialer's writes past ``EARLY_BYTES`` before HANDSHAKE_DONE, in order:
        #: (stream id or ``_DATAGRAM``, bytes, fin)
        self._held: list[tuple[int, bytes, bool]] = []
        self._early = 0
        self._confirmed = not self.is_client
        # Stream turns (``_take_turn``): qh3's core puts the next stream with unsent data in
        # every packet, so N busy streams arrive one frame, one event per packet instead of
        # merged runs (16 streams: ~45x the events, 2.4x the receiver's CPU per byte). Writes
        # wait here, in order, while another stream's turn has unsent data in qh3 (both made
        # when first needed: most connections never have two busy streams).
        self._turn: int | None = None
        self._waiting: list[tuple[int, bytes, bool]] | None = None
        self._waiting_bytes: dict[int, int] | None = None

    # -- inputs ---------------------------------------------------------------------------------
    def connect(self, addr: Address, now: float) -> None:
        self.quic.connect(addr, now)
        self._collect()

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            self.quic.receive_datagram(data, addr, now)
        except QuicConnectionError as exc:
            self._fail(Code.INTERNAL_ERROR, f"QUIC core: {exc}")
        self._collect()

    def receive_datagrams(self, datagrams: list[bytes], addr: Address, now: float) -> None:
        """A burst from one source: qh3 takes it in one call once the handshake is done."""
        if len(datagrams) == 1:
            self.receive_datagram(datagrams[0], addr, now)
            return
        try:
            self.quic.receive_many_datagrams(datagrams, addr, now)
        except QuicConnectionError as exc:
            self._fail(Code.INTERNAL_ERROR, f"QUIC core: {exc}")
        self._collect()

    def handle_timer(self, now: float) -> None:
        self._in_timer = True
        try:
            self.quic.handle_timer(now)
            self._collect()
        except QuicConnectionError as exc:
            self._fail(Code.INTERNAL_ERROR, f"QUIC core: {exc}")
        finally:
            self._in_timer = False

    def consumed(self, stream_id: int, n: int) -> None:
        """The application read (or dropped) ``n`` received bytes (of any stream: the budget is
        the connection's): receive credit may advance."""
        self._unread = max(0, self._unread - n)
        self._regate()

    def accepted(self) -> None:
        """The application took one announced peer stream."""
        self.backlog = max(0, self.backlog - 1)
        self._regate()

    def tracks(self, stream_id: int) -> bool:
        """False once both halves of the stream have ended (its state is gone)."""
        return stream_id in self._streams

    # -- outputs --------------------------------------------------------------------------------
    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        try:
            out = self.quic.datagrams_to_send(now)
            while self._waiting and self._take_turn():
                more = self.quic.datagrams_to_send(now)
                if not more:
                    break
                out.extend(more)
            return out
        except QuicConnectionError as exc:
            if not self.handshake_done and self.closed is None:
                # qh3 2.1 cannot build a server's first flight when a small ServerHello, the
                # certificate and several NEW_CONNECTION_IDs must share one padded datagram
                # (clients that offer no ML-KEM share: aioquic, quic-go). The state survives;
                # the client's retransmitted Initial gets a flight that fits.
                self.first_flight_errors += 1
                return []
            self._fail(Code.INTERNAL_ERROR, f"QUIC core: {exc}")
            return []

    def deadline(self) -> float | None:
        return self.quic.get_timer()

    def get_timer(self) -> float | None:
        """``deadline`` under the name every core uses (``keywire.core.Core``)."""
        return self.quic.get_timer()

    @property
    def unread(self) -> int:
        return self._unread

    @property
    def gated(self) -> bool:
        return self.quic.hold_events

    def send_buffered(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` queued but not yet sent once."""
        held = sum(len(d) for s, d, _ in self._held if s == stream_id) if self._held else 0
        if self._waiting_bytes:
            held += self._waiting_bytes.get(stream_id, 0)
        try:
            return self.quic.get_send_buffer_size(stream_id) + held
        except (QuicConnectionError, ValueError):
            return held

    def all_acknowledged(self) -> bool:
        """Every byte and FIN written is acknowledged: a clean close loses no stream data.

        Only packets sent after the first write since everything was last quiet can carry
        unacknowledged stream data (a lost packet's data is resent in a new, higher-numbered
        packet), so packets in flight from before it (the dialer's path-MTU probe, the
        handshake's NEW_CONNECTION_IDs, a keep-alive PING) do not hold a close up for the
        peer's delayed ACK. qh3 counts data waiting to be resent neither as buffered nor as in
        flight, so a loss seen since the last look answers "not yet" while packets are in
        flight, and the mark is cleared only when nothing is in flight and nothing was lost
        since the last look (callers check after transmitting, when a resend is out).
        """
        core = self.quic._core
        if core is None or self.closed is not None:
            return True
        if self.send_buffered_total() != 0:
            return False
        floor = self._written_after
        if floor is None:
            return True
        losses = getattr(core, "loss_total", 0)
        lost = losses != self._losses
        self._losses = losses
        if core.bytes_in_flight == 0:
            if not lost:
                self._written_after = None
            return True
        if lost:
            return False  # what was lost may be resent after this; in flight: we hear again
        outstanding = getattr(core, "outstanding_application_packets", None)
        if outstanding is None:  # a qh3 without it: wait for everything
            return False
        return not any(number > floor for number, *_ in outstanding)

    def _last_packet_number(self) -> int:
        """The highest 1-RTT packet number in flight (-1 if none): anything sent from now on
        is numbered above it."""
        core = self.quic._core
        outstanding = (
            None if core is None else getattr(core, "outstanding_application_packets", None)
        )
        if outstanding is None:
            return -1
        return max((number for number, *_ in outstanding), default=-1)

    def send_buffered_total(self) -> int:
        held = sum(len(d) for _, d, _ in self._held) if self._held else 0
        if self._waiting_bytes:
            held += sum(self._waiting_bytes.values())
        try:
            return self.quic.get_send_buffer_size() + held
        except (QuicConnectionError, ValueError):
            return held

    @property
    def max_datagram_size(self) -> int:
        """Largest datagram payload that fits one packet on the current path (0 if none)."""
        core = self.quic._core
        if core is None or not self.handshake_done:
            return 0
        path_mtu = int(core.active_path[5])
        limit = path_mtu - DATAGRAM_OVERHEAD
        peer = getattr(self.quic, "_remote_max_datagram_frame_size", None)
        if peer is None:
            return 0
        return max(0, min(limit, int(peer) - 3))

    # -- commands: streams --------------------------------------------------------------------
    def can_open_stream(self) -> bool:
        core = self.quic._core
        if core is None or not self.handshake_done or self.closed is not None:
            return False
        allowed, _, opened, _ = core.stream_limits
        return bool(opened < allowed)

    def open_stream(self) -> int:
        """Open a bidirectional stream (check ``can_open_stream`` first)."""
        self._check_open()
        stream_id = self.quic.get_next_available_stream_id()
        self._call(self.quic.send_stream_data, stream_id, b"", False)
        self._streams[stream_id] = _Halves()
        return stream_id

    def send(self, stream_id: int, data: bytes | memoryview, fin: bool = False) -> int:
        """Queue all of ``data`` (the shell bounds what it hands over); returns its length."""
        halves = self._streams.get(stream_id)
        if halves is None or not halves.send_open:
            raise StreamError(Code.CLOSED, f"stream {stream_id} can no longer send")
        self._check_open()
        if self._written_after is None:
            self._written_after = self._last_packet_number()
            core = self.quic._core
            self._losses = getattr(core, "loss_total", 0) if core is not None else 0
        if not self._confirmed and self._hold(stream_id, data, fin):
            pass
        elif self._confirmed and (self._waiting or self._turn_busy(stream_id)):
            # (not before HANDSHAKE_DONE: ``_release_held`` then hands qh3 the held writes
            # directly, which must not overtake a waiting one of the same stream)
            self._wait(stream_id, bytes(data), fin)
        else:
            self._call(self.quic.send_stream_data, stream_id, data, fin)
            if data:
                self._turn = stream_id
        if fin:
            halves.send_open = False
            self._retire(stream_id, halves)
        return len(data)

    def _hold(self, stream_id: int, data: bytes | memoryview, fin: bool) -> bool:
        """Before HANDSHAKE_DONE: count ``data`` as early, or keep it (True) once the early
        bytes are spent, so order is kept until ``_release_held``."""
        if not self._held and self._early + len(data) <= EARLY_BYTES:
            self._early += len(data)
            return False
        self._held.append((stream_id, bytes(data), fin))
        return True

    def _wait(self, stream_id: int, data: bytes, fin: bool) -> None:
        waiting, counts = self._waiting, self._waiting_bytes
        if waiting is None or counts is None:
            waiting, counts = self._waiting, self._waiting_bytes = [], {}
        waiting.append((stream_id, data, fin))
        counts[stream_id] = counts.get(stream_id, 0) + len(data)

    def _turn_busy(self, stream_id: int) -> bool:
        """Another stream's turn still has unsent bytes in qh3."""
        turn = self._turn
        if turn is None or turn == stream_id:
            return False
        try:
            return bool(self.quic.get_send_buffer_size(turn))
        except (QuicConnectionError, ValueError):
            return False

    def _take_turn(self) -> bool:
        """Hand qh3 up to ``TURN_BYTES`` of the first waiting stream's writes, in order, once
        the current turn's bytes are sent (or it cannot send: no flow credit while the path
        has room), so streams alternate in runs of packets. False if nothing was handed."""
        waiting, counts = self._waiting, self._waiting_bytes
        if not waiting or counts is None or self.closed is not None:
            return False
        if self._local_close is not None:
            return False
        core = self.quic._core
        if core is None:
            return False
        turn_left = self._turn is not None and self._turn_busy(-1)  # -1: any turn counts
        if turn_left and core.bytes_in_flight >= core.congestion_window:
            return False  # the path is full: the turn's bytes go first
        stream_id = waiting[0][0]
        taken = 0
        more = False  # writes of this stream left for a later turn
        rest: list[tuple[int, bytes, bool]] = []
        for entry in waiting:
            if entry[0] != stream_id or taken >= TURN_BYTES:
                more = more or entry[0] == stream_id
                rest.append(entry)
                continue
            data, fin = entry[1], entry[2]
            taken += len(data)
            try:
                self.quic.send_stream_data(stream_id, data, fin)
            except QuicConnectionError as exc:
                self._fail(Code.INTERNAL_ERROR, f"QUIC core: {exc}")
                return False
            except ValueError:
                pass  # the peer stopped that stream meanwhile (qh3 reset it)
        left = counts.pop(stream_id, 0) - taken
        if more:
            counts[stream_id] = left
        if rest:
            self._waiting = rest
        else:
            self._waiting = self._waiting_bytes = None
        self._turn = stream_id
        return True

    def _release_held(self) -> None:
        """HANDSHAKE_DONE arrived: what was held goes to qh3 in the order it was written."""
        self._confirmed = True
        held, self._held = self._held, []
        if self.closed is not None or self._local_close is not None:
            return
        for stream_id, data, fin in held:
            try:
                if stream_id == _DATAGRAM:
                    self.quic.send_datagram_frame(data)
                else:
                    self.quic.send_stream_data(stream_id, data, fin)
            except QuicConnectionError as exc:
                self._fail(Code.INTERNAL_ERROR, f"QUIC core: {exc}")
                return
            except ValueError:
                continue  # the peer stopped that stream meanwhile (qh3 reset it)

    def reset(self, stream_id: int, code: int) -> bool:
        """RESET_STREAM(code) unless the sending half already ended; True if sent."""
        halves = self._live(stream_id)
        if halves is None or not halves.send_open:
            return False
        halves.send_open = False
        if self._held:  # never sent: nothing of it reaches the peer after the reset
            self._held = [entry for entry in self._held if entry[0] != stream_id]
        waiting, counts = self._waiting, self._waiting_bytes
        if waiting and counts and counts.pop(stream_id, None) is not None:
            rest = [entry for entry in waiting if entry[0] != stream_id]
            if rest:
                self._waiting = rest
            else:
                self._waiting = self._waiting_bytes = None
        self._call(self.quic.reset_stream, stream_id, code)
        self._retire(stream_id, halves)
        return True

    def stop_sending(self, stream_id: int, code: int) -> bool:
        """STOP_SENDING(code) unless the receiving half already ended; True if sent."""
        halves = self._live(stream_id)
        if halves is None or not halves.recv_open:
            return False
        halves.discarding = True
        self._call(self.quic.stop_stream, stream_id, code)
        return True

    def _live(self, stream_id: int) -> _Halves | None:
        """The halves of a known stream while the connection is open (else None)."""
        return self._streams.get(stream_id) if self.closed is None else None

    # -- commands: datagrams, ping, close -------------------------------------------------------
    def send_datagram(self, data: bytes) -> None:
        self._check_open()
        limit = self.max_datagram_size
        if len(data) > limit:
            # never hand qh3 a datagram it cannot fit: it would sit at the head of its queue
            # and stall the connection ("packet builder capacity exhausted")
            raise DatagramTooLarge(len(data), limit)
        if self._confirmed or not self._hold(_DATAGRAM, data, False):
            self._call(self.quic.send_datagram_frame, data)

    def ping(self) -> None:
        if self.closed is None and self.quic.established:
            self._ping_uid += 1
            self._call(self.quic.send_ping, self._ping_uid)

    def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """CONNECTION_CLOSE with an application ``code`` (0 clean)."""
        if self.closed is not None or self._local_close is not None:
            return
        self._local_reason = reason or "closed locally"
        self._local_close = ConnectionClosed(code, self._local_reason)
        try:
            self.quic.close(error_code=int(code), frame_type=None, reason_phrase=reason)
        except QuicConnectionError:
            pass
        if self.quic._core is None:
            # nothing was ever sent: there is no QUIC state to drain
            self._finish_local()
        self._collect()

    def refuse(self) -> None:
        """Close a just-created server connection with CONNECTION_REFUSED (transport error)."""
        self._local_reason = "refused: connection limit"
        self._local_close = ConnectionClosed(Code.QUEUE_FULL, self._local_reason)
        try:
            self.quic.close(
                error_code=CONNECTION_REFUSED, frame_type=0, reason_phrase="server busy"
            )
        except QuicConnectionError:
            pass

    # -- internals ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed is not None:
            raise self.closed.error()
        if self._local_close is not None:
            raise self._local_close

    def _call(self, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except QuicConnectionError as exc:
            self._fail(Code.INTERNAL_ERROR, f"QUIC core: {exc}")
            self._check_open()
        except ValueError as exc:
            raise StreamError(Code.PROTOCOL_ERROR, f"QUIC refused: {exc}") from None

    def _fail(self, code: Code, reason: str) -> None:
        if self.closed is None and self._local_close is None:
            self._local_reason = reason
            self._local_close = ConnectionClosed(code, reason)
            try:
                self.quic.close(error_code=int(code), frame_type=None, reason_phrase=reason[:100])
            except QuicConnectionError:
                pass
            self._finish_local()

    def _finish(self, code: int, reason: str, kind: str, *, remote: bool = False) -> None:
        if self.closed is None:
            self.closed = ConnectionTerminated(code, reason, remote, kind)
            self._events.append(self.closed)

    def _finish_local(self) -> None:
        assert self._local_close is not None
        self._finish(self._local_close.wire_code, self._local_reason, "application")

    def _retire(self, stream_id: int, halves: _Halves) -> None:
        if not halves.send_open and not halves.recv_open:
            self._streams.pop(stream_id, None)
            self._events.append(StreamClosed(stream_id))

    def _regate(self) -> None:
        if self._unread >= self._window or self.backlog >= self._max_backlog:
            self.quic.hold_events = True
        elif self.quic.hold_events:
            self.quic.release_events()
            self._collect()

    def _is_local(self, stream_id: int) -> bool:
        return (stream_id & 1) == (0 if self.is_client else 1)

    def _peer_stream(self, stream_id: int) -> _Halves | None:
        """State of a stream an event names; creates (and announces) peer-opened streams."""
        halves = self._streams.get(stream_id)
        if halves is not None:
            return halves
        if self._is_local(stream_id) or not self._first_sight(stream_id):
            return None
        if stream_id & 2:
            # KPS has no unidirectional streams
            try:
                self.quic.stop_stream(stream_id, Code.UNSUPPORTED)
            except (QuicConnectionError, ValueError):
                pass
            return None
        halves = _Halves()
        self._streams[stream_id] = halves
        self.backlog += 1
        self._events.append(StreamOpened(stream_id))
        return halves

    def _first_sight(self, stream_id: int) -> bool:
        """True the first time a peer stream id shows up (bounded by the peer's stream limit)."""
        uni = (stream_id >> 1) & 1
        nxt = self._next_peer[uni]
        skipped = self._skipped
        if stream_id >= nxt:
            if stream_id > nxt:
                if skipped is None:
                    skipped = self._skipped = set()
                skipped.update(range(nxt, stream_id, 4))
            self._next_peer[uni] = stream_id + 4
            return True
        if skipped is not None and stream_id in skipped:
            skipped.discard(stream_id)
            return True
        return False

    def _collect(self) -> None:
        """Translate qh3 events into session events.

        Stream data is merged per stream over a run of data events: qh3 merges consecutive
        frames of one stream itself, but frames of several streams interleave packet by packet,
        so 16 busy streams otherwise cost one event (and one wake-up of a reader) per packet.
        Any other event first flushes the run, so order within a stream and relative to resets
        and the connection's end is kept.
        """
        quic = self.quic
        run: dict[int, list[qe.StreamDataReceived]] = {}
        while True:
            event = quic.next_event()
            if event is None:
                break
            if isinstance(event, qe.StreamDataReceived):
                run.setdefault(event.stream_id, []).append(event)
                continue
            if run:
                self._flush_data(run)
            if isinstance(event, qe.StreamReset):
                halves = self._peer_stream(event.stream_id)
                if halves is not None and halves.recv_open:
                    halves.recv_open = False
                    self._events.append(StreamReset(event.stream_id, event.error_code))
                    self._retire(event.stream_id, halves)
            elif isinstance(event, qe.StopSendingReceived):
                halves = self._peer_stream(event.stream_id)
                if halves is not None and halves.send_open:
                    # qh3 answers STOP_SENDING with RESET_STREAM(same code) itself
                    halves.send_open = False
                    self._events.append(StopSendingReceived(event.stream_id, event.error_code))
                    self._retire(event.stream_id, halves)
            elif isinstance(event, qe.DatagramFrameReceived):
                self._events.append(DatagramReceived(event.data))
            elif isinstance(event, qe.HandshakeCompleted):
                self._alpn = event.alpn_protocol
                self._tls_complete = True
            elif isinstance(event, qe.ConnectionIdIssued):
                self.cid_changes.append(ConnectionIdChanged(event.connection_id, True))
            elif isinstance(event, qe.ConnectionIdRetired):
                self.cid_changes.append(ConnectionIdChanged(event.connection_id, False))
            elif isinstance(event, qe.ConnectionTerminated):
                self._on_terminated(event)
        if run:
            self._flush_data(run)
        if self._tls_complete and not self.handshake_done and self.closed is None:
            # a dialer is handed the connection at TLS completion (its Finished is sent in the
            # same transmit), like quinn's; until HANDSHAKE_DONE it gives qh3 at most
            # EARLY_BYTES: qh3 2.1 sends no Handshake-space probe while the congestion window is
            # full, and the server acknowledges no 1-RTT packet before it has our Finished, so
            # the window cannot shrink meanwhile and a lost Finished always has room to go again
            self.handshake_done = True
            self._events.append(HandshakeCompleted(self._alpn))
        if not self._confirmed and getattr(quic, "_handshake_confirmed", True):
            self._release_held()
        if self.closed is None:
            # a peer's CONNECTION_CLOSE puts qh3 into draining at once but reports
            # ConnectionTerminated only when draining ends; the ending is known now
            pending = getattr(quic, "_close_event", None)
            if isinstance(pending, qe.ConnectionTerminated) and not quic.established:
                self._on_terminated(pending)
        if self.closed is None:
            self._regate()

    def _flush_data(self, run: dict[int, list[qe.StreamDataReceived]]) -> None:
        for stream_id, events in run.items():
            if len(events) == 1:
                self._on_data(stream_id, events[0].data, events[0].end_stream)
            else:
                data = b"".join([e.data for e in events])
                self._on_data(stream_id, data, any(e.end_stream for e in events))
        run.clear()

    def _on_data(self, stream_id: int, data: bytes, end: bool) -> None:
        halves = self._peer_stream(stream_id)
        if halves is None or not halves.recv_open:
            return
        if end:
            halves.recv_open = False
        if not halves.discarding:
            if data:
                self._unread += len(data)
            self._events.append(StreamData(stream_id, data, end))
        self._retire(stream_id, halves)

    def _on_terminated(self, event: qe.ConnectionTerminated) -> None:
        if self._local_close is not None:
            self._finish_local()
            return
        core = self.quic._core
        local_error = core.local_error if core is not None else None
        reason = event.reason_phrase or ""
        if self._in_timer and local_error is None and event.frame_type is not None:
            self._finish(Code.TIMEOUT, reason or "idle timeout", "timeout")
        elif event.frame_type is None and local_error is None:
            # CONNECTION_CLOSE 0x1d carries no frame type: the peer application's own code
            self._finish(event.error_code, reason or "closed by peer", "application", remote=True)
        else:
            code = transport_code(event.error_code)
            # a TLS failure on our side (the certhash pin, a missing ALPN) closes through the
            # facade, which leaves local_error unset; "closing" (not "draining") still says we
            # are the one sending CONNECTION_CLOSE, so the socket must stay open to send it
            local = local_error is not None or (core is not None and core.state == "closing")
            where = "local" if local else "peer"
            text = f"QUIC transport error 0x{event.error_code:x} ({where}): {reason}".rstrip(": ")
            self._finish(code, text, "transport", remote=not local)


if TYPE_CHECKING:

    def _is_a_core(session: KpsSession) -> DatagramCore:
        """mypy checks that ``KpsSession`` has every verb of ``keywire.core.DatagramCore``."""
        return session
