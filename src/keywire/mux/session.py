"""The sans-IO mux session: yamux streams with QUIC's lifecycle, as bytes in and bytes out.

``MuxSession`` never touches a socket or the event loop. The shell feeds it what the pipe
delivered (``receive_data``, ``receive_eof``, ``connection_lost``), calls the local operations
(``open_stream``, ``send``, ``close_write``, ``reset``, ``stop_sending``, ``consumed``,
``close``), and then takes ``data_to_send()``, ``events()`` and ``next_deadline()``; when that
deadline passes it calls ``handle_timer(now)``. Everything the protocol decides lives here, so
timers, windows and every error path are tested without sockets.

Keywire's meaning of the yamux frames (see docs/mux.md for the wire details):

* A stream has two halves. FIN ends the sender's half; a *coded* RST (length field
  ``0x100 + code``) abandons only the sender's half, as QUIC's RESET_STREAM does; a plain RST
  (length below 0x100, what plain yamux sends) kills both halves with code ``reset``, and so does
  an RST answering our SYN before any ACK (a refused stream).
* STOP_SENDING (flag 0x10 on a WindowUpdate, coded length) asks the peer to stop; the receiver
  fails its writes with that code and resets its half with the same code.
* GoAway ends the whole connection with a code (0, 1, 2 keep yamux's meanings; other codes are
  coded fields).
* The receive window is advanced only for bytes the application consumed, once they reach half
  the window, so a stream never buffers more than one window. A window starts at yamux's
  256 KiB and doubles (up to ``max_window``, and while the sum of all windows stays within
  ``connection_window``) when the application drains it within two round trips, i.e. when the
  window, not the reader, is what limits the stream. The round trip comes from pings.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import events as ev
from ..errors import Code, StreamError

if TYPE_CHECKING:
    from ..core import ByteCore
from .frame import (
    CODE_BASE,
    HEADER,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_CODE_FIELD,
    MAX_UINT32,
    Flag,
    FrameType,
    MuxProtocolError,
    check_code,
    decode_code,
    decode_go_away,
    decode_header,
    encode_code,
    encode_go_away,
)

_SYN = int(Flag.SYN)
_ACK = int(Flag.ACK)
_FIN = int(Flag.FIN)
_RST = int(Flag.RST)
_STOP = int(Flag.STOP_SENDING)
_DATA = int(FrameType.DATA)
_WINDOW = int(FrameType.WINDOW_UPDATE)
_PING = int(FrameType.PING)
_GO_AWAY = int(FrameType.GO_AWAY)
#: the largest receive window we offer: far beyond any useful size, far below uint32 overflow
MAX_WINDOW = 1 << 30


@dataclass(frozen=True)
class MuxConfig:
    """Limits and timers of one session (the same on both sides unless configured otherwise)."""

    #: streams the peer may have open at once (more are refused with queue-full); also how many
    #: streams we open before ``can_open_stream`` turns False
    max_streams: int = 256
    #: receive window every stream starts with, bytes (at least yamux's 256 KiB)
    window: int = INITIAL_WINDOW
    #: a stream's window may grow to this when the reader keeps up (equal to ``window``: fixed)
    max_window: int = 16 * 1024 * 1024
    #: windows grow only while all streams' windows together stay within this many bytes
    connection_window: int = 64 * 1024 * 1024
    #: largest Data payload we put in one frame
    max_frame: int = 64 * 1024
    #: seconds between keep-alive pings; None turns keep-alive off
    keepalive_interval: float | None = 30.0
    #: seconds a ping may go unanswered before the connection fails with timeout
    keepalive_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, not {self.max_streams}")
        if not INITIAL_WINDOW <= self.window <= MAX_WINDOW:
            raise ValueError(
                f"mux window must be {INITIAL_WINDOW}..{MAX_WINDOW} bytes, not {self.window}"
            )
        if not self.window <= self.max_window <= MAX_WINDOW:
            raise ValueError(
                f"mux max_window must be {self.window}..{MAX_WINDOW} bytes, not {self.max_window}"
            )
        if self.connection_window < 0:
            raise ValueError("connection_window must not be negative")
        if not 1 <= self.max_frame <= MAX_UINT32:
            raise ValueError(f"max_frame must be 1..{MAX_UINT32}, not {self.max_frame}")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive (or None to turn it off)")
        if self.keepalive_timeout <= 0:
            raise ValueError("keepalive_timeout must be positive")

    @property
    def autotune(self) -> bool:
        """Whether windows may grow (and so whether the session probes the round trip)."""
        return self.max_window > self.window


class _StreamState:
    """Per-stream accounting. ``recv_window`` is the credit the peer still holds."""

    __slots__ = (
        "acked",
        "granted_at",
        "id",
        "local",
        "recv_closed",
        "recv_stopped",
        "recv_unacked",
        "recv_window",
        "send_closed",
        "send_window",
        "window",
    )

    def __init__(self, stream_id: int, *, local: bool, window: int, now: float) -> None:
        self.id = stream_id
        self.local = local
        self.acked = not local
        self.send_window = INITIAL_WINDOW
        #: the receive window's current size (grows with auto-tuning)
        self.window = window
        self.recv_window = window
        self.granted_at = now
        self.recv_unacked = 0
        self.send_closed = False
        self.recv_closed = False
        self.recv_stopped = False


class MuxSession:
    """One side of a yamux session (``client`` opens odd stream ids, the server even ones)."""

    def __init__(self, *, client: bool, config: MuxConfig | None = None, now: float = 0.0) -> None:
        self.client = client
        self.config = config if config is not None else MuxConfig()
        self._streams: dict[int, _StreamState] = {}
        self._next_id = 1 if client else 2
        self._peer_parity = 0 if client else 1
        self._peer_last_id = 0
        self._inbound = 0
        self._outbound = 0
        self._max_data = self.config.max_window + MAX_CODE_FIELD
        #: the sum of every open stream's receive window (bounded by ``connection_window``)
        self._windows_total = 0
        # receive state: a partial header, or the rest of a Data payload still to come
        self._partial = b""
        self._payload_left = 0
        self._payload_stream: _StreamState | None = None
        self._payload_deliver = False
        self._payload_flags = 0
        # frames waiting for the pipe: headers and payload slices, joined once when taken
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._control = 0
        self._events: deque[ev.Event] = deque()
        self._terminated: ev.ConnectionTerminated | None = None
        self._now = now
        # keep-alive
        interval = self.config.keepalive_interval
        self._ping_due: float | None = None if interval is None else now + interval
        self._ping_id = 0
        self._ping_outstanding: int | None = None
        self._ping_sent_at = 0.0
        self.rtt: float | None = None
        if self.config.autotune:
            self._send_ping(now)  # the round trip that window auto-tuning compares against

    # -- state --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._terminated is not None

    @property
    def terminated(self) -> ev.ConnectionTerminated | None:
        return self._terminated

    def can_open_stream(self) -> bool:
        """False while ``max_streams`` of our streams are open (we assume the peer's limit)."""
        return (
            self._terminated is None
            and self._outbound < self.config.max_streams
            and self._next_id <= MAX_UINT32
        )

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def stream_ids(self) -> list[int]:
        """Streams with at least one half still open."""
        return list(self._streams)

    @property
    def pending_output(self) -> int:
        return self._out_size

    @property
    def control_backlog(self) -> int:
        """Bytes of answers (pongs, ACKs, refusals) queued since the last ``data_to_send``."""
        return self._control

    def receive_window(self, stream_id: int) -> int:
        """The current size of a stream's receive window (0 once it ended)."""
        st = self._streams.get(stream_id)
        return 0 if st is None else st.window

    def send_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return 0 if st is None or st.send_closed else st.send_window

    # -- output -------------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 and isinstance(out[0], bytes) else b"".join(out)
        self._out = []
        self._out_size = 0
        self._control = 0
        return data

    def events(self) -> list[ev.Event]:
        """Every event since the last call (``next_event`` one at a time; use one of them)."""
        events = list(self._events)
        self._events.clear()
        return events

    def next_event(self) -> ev.Event | None:
        """The oldest unreported event (``keywire.events``), None when there is none."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """``next_deadline`` under the name every core uses (``keywire.core.Core``)."""
        return self.next_deadline()

    def next_deadline(self) -> float | None:
        if self._terminated is not None:
            return None
        if self._ping_outstanding is not None:
            if self.config.keepalive_interval is None:
                return None
            return self._ping_sent_at + self.config.keepalive_timeout
        return self._ping_due

    def _frame(self, frame_type: int, flags: int, stream_id: int, length: int) -> None:
        self._out.append(HEADER.pack(0, frame_type, flags, stream_id, length))
        self._out_size += HEADER_SIZE

    def _answer(self, frame_type: int, flags: int, stream_id: int, length: int) -> None:
        """A frame sent because of what the peer sent; counted so the shell can push back."""
        self._frame(frame_type, flags, stream_id, length)
        self._control += HEADER_SIZE

    # -- local operations -----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._terminated is not None:
            raise self._terminated.error()

    def open_stream(self) -> int:
        """A new outgoing stream id; its SYN (with our larger window) is queued at once."""
        self._check_open()
        if self._next_id > MAX_UINT32:
            raise StreamError(Code.QUEUE_FULL, "this connection has used all its stream ids")
        if self._outbound >= self.config.max_streams:
            raise StreamError(
                Code.QUEUE_FULL,
                f"{self._outbound} streams open, the limit is {self.config.max_streams}",
            )
        stream_id = self._next_id
        self._next_id += 2
        self._add_stream(
            _StreamState(stream_id, local=True, window=self.config.window, now=self._now)
        )
        self._frame(_WINDOW, _SYN, stream_id, self.config.window - INITIAL_WINDOW)
        return stream_id

    def send(self, stream_id: int, data: bytes | memoryview, end: bool = False) -> int:
        """Queue up to the send window (and ``max_frame``) of ``data``; returns bytes taken.
        With ``end``, FIN follows once all of ``data`` was taken.

        Read-only data (``bytes`` or a read-only view of it) is queued without a copy, so it
        must not change until ``data_to_send`` takes it; writable buffers are copied.
        """
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None or st.send_closed:
            raise StreamError(Code.CLOSED, f"stream {stream_id} can no longer send")
        n = min(len(data), st.send_window, self.config.max_frame)
        if n <= 0:
            if end and not data:
                self.close_write(stream_id)
            return 0
        chunk = data if n == len(data) else data[:n]
        if isinstance(chunk, memoryview) and not chunk.readonly:
            chunk = chunk.tobytes()
        self._out += (HEADER.pack(0, _DATA, 0, stream_id, n), chunk)
        self._out_size += HEADER_SIZE + n
        st.send_window -= n
        if end and n == len(data):
            self.close_write(stream_id)
        return n

    def close_write(self, stream_id: int) -> None:
        """FIN: our half ends after the bytes already queued."""
        self._check_open()
        self._end_sending(stream_id, _FIN, 0)

    def reset(self, stream_id: int, code: int = Code.RESET) -> None:
        """Abandon our half with ``code`` (a coded RST; the peer's reads fail with it)."""
        field = encode_code(code)
        if self._terminated is None:
            self._end_sending(stream_id, _RST, field)

    def _end_sending(self, stream_id: int, flag: int, field: int) -> None:
        """End our half with ``flag`` (FIN or RST) unless it already ended."""
        st = self._streams.get(stream_id)
        if st is None or st.send_closed:
            return
        st.send_closed = True
        self._frame(_WINDOW, flag, stream_id, field)
        self._forget_if_done(st)

    def stop_sending(self, stream_id: int, code: int = Code.CANCELLED) -> None:
        """Ask the peer to stop sending; what still arrives is dropped, no more credit given."""
        field = encode_code(code)
        if self._terminated is not None:
            return
        st = self._streams.get(stream_id)
        if st is None or st.recv_closed or st.recv_stopped:
            return
        st.recv_stopped = True
        # a plain yamux peer ignores the flag and adds the field to its window: allow for it
        st.recv_window += field
        self._frame(_WINDOW, _STOP, stream_id, field)

    def consumed(self, stream_id: int, n: int, now: float | None = None) -> None:
        """The application took ``n`` bytes: grant them back once half a window is free.

        With ``now`` (and a measured round trip) the window doubles when half of it was
        drained within two round trips of the previous grant.
        """
        st = self._streams.get(stream_id)
        if st is None or n <= 0 or self._terminated is not None:
            return
        st.recv_unacked += n
        if st.recv_unacked < st.window // 2 or st.recv_closed or st.recv_stopped:
            return
        delta, st.recv_unacked = st.recv_unacked, 0
        if now is not None:
            delta += self._grow(st, now)
            st.granted_at = now
        st.recv_window += delta
        self._frame(_WINDOW, 0, stream_id, delta)

    def _grow(self, st: _StreamState, now: float) -> int:
        """Extra window for a stream whose reader keeps up with it; 0 if it should not grow."""
        rtt = self.rtt
        if rtt is None or st.window >= self.config.max_window or now - st.granted_at > 2 * rtt:
            return 0
        room = self.config.connection_window - self._windows_total
        extra = min(st.window, self.config.max_window - st.window, room)
        if extra <= 0:
            return 0
        st.window += extra
        self._windows_total += extra
        return extra

    def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """End the session: GoAway with ``code``; every stream ends."""
        check_code(code)
        self._terminate(code, remote=False, reason=reason or "closed locally", go_away=True)

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> None:
        """End at once: whatever output is still queued is dropped; only GoAway(code) goes."""
        check_code(code)
        if self._terminated is not None:
            return
        self._out = []
        self._out_size = self._control = 0
        self._terminate(code, remote=False, reason=reason or "aborted locally", go_away=True)

    def receive_eof(self) -> None:
        """The pipe ended. Without a GoAway first, that is a network error."""
        where = " in the middle of a frame" if self._partial or self._payload_left else ""
        self._terminate(
            Code.NETWORK_ERROR,
            remote=False,
            go_away=False,
            reason=f"the pipe ended{where} without a GoAway",
        )

    def connection_lost(self, code: int, reason: str) -> None:
        """The pipe failed (``code`` is usually network-error)."""
        self._terminate(code, remote=False, reason=reason, go_away=False)

    def handle_timer(self, now: float) -> None:
        """Run the keep-alive: send a ping when due, fail with timeout when one goes unanswered."""
        self._now = now
        if self._terminated is not None:
            return
        timeout = self.config.keepalive_timeout
        if self._ping_outstanding is not None:
            if self.config.keepalive_interval is not None and now >= self._ping_sent_at + timeout:
                self._terminate(
                    Code.TIMEOUT,
                    remote=False,
                    go_away=True,
                    reason=f"no answer to a keep-alive ping within {timeout:g} s",
                )
        elif self._ping_due is not None and now >= self._ping_due:
            self._send_ping(now)

    def _send_ping(self, now: float) -> None:
        self._ping_id = self._ping_id % MAX_UINT32 + 1
        self._ping_outstanding = self._ping_id
        self._ping_sent_at = now
        self._frame(_PING, _SYN, 0, self._ping_id)

    # -- input ----------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the pipe; a protocol violation ends the session with GoAway(1)."""
        if self._terminated is not None or not data:
            return
        self._now = now
        if self._partial:
            data = self._partial + data
            self._partial = b""
        try:
            self._parse(data)
        except MuxProtocolError as exc:
            self._terminate(Code.PROTOCOL_ERROR, remote=False, reason=str(exc), go_away=True)

    def _parse(self, data: bytes) -> None:
        view = memoryview(data)
        end = len(data)
        pos = 0
        while pos < end and self._terminated is None:
            left = self._payload_left
            if left:
                n = left if left <= end - pos else end - pos
                st = self._payload_stream
                if st is not None and self._payload_deliver:
                    chunk = data if n == end else bytes(view[pos : pos + n])
                    self._events.append(ev.StreamData(st.id, chunk))
                pos += n
                self._payload_left = left - n
                if self._payload_left == 0 and st is not None:
                    self._payload_stream = None
                    if self._payload_flags & (_FIN | _RST):
                        self._end_flags(st, self._payload_flags, None)
                continue
            if end - pos < HEADER_SIZE:
                self._partial = bytes(view[pos:])
                return
            header = decode_header(data, pos, max_data=self._max_data)
            pos += HEADER_SIZE
            kind = header.type
            if kind == _DATA:
                self._on_data(header.flags, header.stream_id, header.length)
            elif kind == _WINDOW:
                self._on_window_update(header.flags, header.stream_id, header.length)
            elif kind == _PING:
                self._on_ping(header.flags, header.stream_id, header.length)
            else:
                self._on_go_away(header.stream_id, header.length)

    def _stream_for(self, flags: int, stream_id: int) -> _StreamState | None:
        """The stream a Data/WindowUpdate frame is for; None for one that already ended."""
        if stream_id == 0:
            raise MuxProtocolError("data or window update on stream 0 (reserved for the session)")
        if flags & _SYN:
            if stream_id & 1 != self._peer_parity:
                raise MuxProtocolError(f"peer opened stream {stream_id}, which has our parity")
            if stream_id <= self._peer_last_id:
                raise MuxProtocolError(
                    f"peer opened stream {stream_id} again (ids must grow; last was "
                    f"{self._peer_last_id})"
                )
            self._peer_last_id = stream_id
            if self._inbound >= self.config.max_streams:
                self._answer(_WINDOW, _RST, stream_id, encode_code(Code.QUEUE_FULL))
                return None
            opened = _StreamState(stream_id, local=False, window=self.config.window, now=self._now)
            self._add_stream(opened)
            self._answer(_WINDOW, _ACK, stream_id, self.config.window - INITIAL_WINDOW)
            self._events.append(ev.StreamOpened(stream_id))
            return opened
        st = self._streams.get(stream_id)
        if st is None:
            ours = stream_id & 1 != self._peer_parity
            if (ours and stream_id >= self._next_id) or (
                not ours and stream_id > self._peer_last_id
            ):
                raise MuxProtocolError(f"frame for stream {stream_id}, which was never opened")
            return None
        if flags & _ACK and st.local:
            st.acked = True
        return st

    def _on_data(self, flags: int, stream_id: int, length: int) -> None:
        st = self._stream_for(flags, stream_id)
        if length == 0:
            if st is not None:
                self._end_flags(st, flags, None)
            return
        if st is not None:
            if st.recv_closed:
                raise MuxProtocolError(f"stream {stream_id}: data after the peer ended its half")
            if length > st.recv_window:
                raise MuxProtocolError(
                    f"stream {stream_id}: {length} bytes sent with only {st.recv_window} of window"
                )
            st.recv_window -= length
            self._payload_deliver = not st.recv_stopped
        self._payload_stream = st
        self._payload_flags = flags
        self._payload_left = length

    def _on_window_update(self, flags: int, stream_id: int, value: int) -> None:
        st = self._stream_for(flags, stream_id)
        if st is None:
            return
        if flags & _RST:
            self._end_flags(st, flags, value)
            return
        if flags & _STOP:
            code = decode_code(value)
            if code is None:
                raise MuxProtocolError(
                    f"stream {stream_id}: STOP_SENDING without a code field "
                    f"(length {value} is below {CODE_BASE:#x})"
                )
            self._on_stop_sending(st, code, value)
        elif value:
            window = st.send_window + value
            if window > MAX_UINT32:
                raise MuxProtocolError(f"stream {stream_id}: window update overflows to {window}")
            st.send_window = window
            if not st.send_closed:
                self._events.append(ev.CreditAvailable(stream_id))
        if flags & _FIN:
            self._end_flags(st, _FIN, None)
        else:
            self._forget_if_done(st)

    def _on_stop_sending(self, st: _StreamState, code: int, field: int) -> None:
        if st.send_closed:
            return
        st.send_closed = True
        self._answer(_WINDOW, _RST, st.id, field)
        self._events.append(ev.StopSendingReceived(st.id, code))

    def _end_flags(self, st: _StreamState, flags: int, rst_field: int | None) -> None:
        """FIN and RST, after any payload of the frame that carried them."""
        if flags & _FIN:
            if st.recv_closed:
                raise MuxProtocolError(f"stream {st.id}: FIN after the peer's half had ended")
            st.recv_closed = True
            self._events.append(ev.StreamData(st.id, b"", True))
        if flags & _RST:
            coded = None if rst_field is None else decode_code(rst_field)
            whole = coded is None or not st.acked
            st.recv_closed = True
            if whole:
                st.send_closed = True
            code = Code.RESET if coded is None else coded
            self._events.append(ev.StreamReset(st.id, code))
            if whole:  # a plain RST (or a refused stream) ends our sending half too
                self._events.append(ev.StopSendingReceived(st.id, code))
        self._forget_if_done(st)

    def _add_stream(self, st: _StreamState) -> None:
        self._streams[st.id] = st
        self._windows_total += st.window
        if st.local:
            self._outbound += 1
        else:
            self._inbound += 1

    def _forget_if_done(self, st: _StreamState) -> None:
        if st.send_closed and st.recv_closed and self._streams.pop(st.id, None) is not None:
            self._windows_total -= st.window
            if st.local:
                self._outbound -= 1
            else:
                self._inbound -= 1
            self._events.append(ev.StreamClosed(st.id))

    def _on_ping(self, flags: int, stream_id: int, value: int) -> None:
        if stream_id != 0:
            raise MuxProtocolError(f"ping on stream {stream_id} (pings use stream 0)")
        if flags & _SYN:
            self._answer(_PING, _ACK, 0, value)
        elif self._ping_outstanding is not None and value == self._ping_outstanding:
            self.rtt = max(0.0, self._now - self._ping_sent_at)
            self._ping_outstanding = None
            interval = self.config.keepalive_interval
            self._ping_due = None if interval is None else self._now + interval

    def _on_go_away(self, stream_id: int, value: int) -> None:
        if stream_id != 0:
            raise MuxProtocolError(f"GoAway on stream {stream_id} (GoAway uses stream 0)")
        code = decode_go_away(value)
        label = Code.from_wire(code).label
        self._terminate(
            code, remote=True, go_away=False, reason=f"peer closed the connection ({label})"
        )

    def _terminate(self, code: int, *, remote: bool, reason: str, go_away: bool) -> None:
        if self._terminated is not None:
            return
        if go_away:
            self._frame(_GO_AWAY, 0, 0, encode_go_away(code))
        self._terminated = ev.ConnectionTerminated(code, reason, remote)
        self._streams.clear()
        self._inbound = self._outbound = self._windows_total = 0
        self._payload_left = 0
        self._payload_stream = None
        self._partial = b""
        self._events.append(self._terminated)


if TYPE_CHECKING:

    def _is_a_core(session: MuxSession) -> ByteCore:
        """mypy checks that ``MuxSession`` has every verb of ``keywire.core.ByteCore``."""
        return session
