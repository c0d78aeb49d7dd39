"""The KPS WebRTC wire v1 engine: HELLO, streams over data channels, credit, retirement.

A sans-IO core shared by the Python server and the Python dialer. It is fed what happened on
the data channels (channel 0 opened, a message on channel N, channel N closed, the peer's
datagram) and what the application did (open, write, close_write, reset, stop_sending, read
``n`` bytes, close), and answers with ``Action``s for the channel layer (send a message, open or
close a channel, tear down) and ``Event``s for the application shell. It never touches a socket
or the event loop; the only time it knows is the ``now`` it is given (for the HELLO deadline
and the idle timeout).

Every violation of the wire rules closes the connection with protocol-error (6), as KPS
SPEC §6 requires: there is no "ignore and hope" path for a misbehaving peer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ... import events as ev
from ...errors import Code, ConnectionClosed, DatagramTooLarge, StreamError
from . import frames as f

CONTROL_CHANNEL = 0
DATAGRAM_CHANNEL = 1
CONTROL_LABEL = "_kps_control"
DATAGRAM_LABEL = "_kps_datagrams"
#: datagram payload cap on WebRTC (KPS §7)
MAX_DATAGRAM_SIZE = 1200
HELLO_TIMEOUT = 15.0


@dataclass(frozen=True)
class WireSettings:
    """Receiver policy: what this side grants the peer (KPS defaults)."""

    initial_max_stream_data: int = 1 << 20
    initial_max_data: int = 8 << 20
    initial_max_streams: int = 100
    hello_timeout: float = HELLO_TIMEOUT
    #: close with timeout after this long without a packet from the peer (0 = never); a live
    #: peer always sends ICE consent checks (every ~5 s), so silence means the path is gone
    idle_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("initial_max_stream_data", "initial_max_data", "initial_max_streams"):
            value = getattr(self, name)
            if not 0 <= value <= f.MAX_OFFSET:
                raise ValueError(f"{name} must be 0..2^62-1, got {value}")
        if self.hello_timeout <= 0:
            raise ValueError("hello_timeout must be positive")
        if self.idle_timeout < 0:
            raise ValueError("idle_timeout must be 0 (off) or positive")


# -- outputs for the channel layer ---------------------------------------------------------------


@dataclass(frozen=True)
class SendMessage:
    """Send one binary message on channel ``channel`` (0 = control)."""

    channel: int
    data: bytes


@dataclass(frozen=True)
class OpenChannel:
    """Create the DCEP channel ``channel`` (reliable, ordered) for a stream we open."""

    channel: int


@dataclass(frozen=True)
class CloseChannel:
    """Close channel ``channel`` (SCTP stream reset): the stream is retired."""

    channel: int


@dataclass(frozen=True)
class SendDatagram:
    data: bytes


@dataclass(frozen=True)
class CloseTransport:
    """Tear the peer connection down; ``flush``: first let channel 0 deliver what is queued."""

    code: int
    flush: bool = True


Action = SendMessage | OpenChannel | CloseChannel | SendDatagram | CloseTransport


# -- outputs for the application shell: the shared vocabulary (``keywire.events``) ----------


def _terminated(error: ConnectionClosed) -> ev.ConnectionTerminated:
    """``error`` as the shared event (its text without the code label it starts with)."""
    text, sep, reason = str(error).partition("): ")
    reason = reason if sep and text.endswith(("local", "peer")) else ""
    return ev.ConnectionTerminated(error.wire_code, reason, error.remote)


@dataclass
class WireStream:
    """One stream's state on both halves."""

    id: int
    local: bool
    # sending half
    send_max: int = 0
    sent: int = 0
    send_end: str | None = None  # "fin" | "reset"
    stop_code: int | None = None
    # receiving half
    recv_max: int = 0
    received: int = 0
    consumed: int = 0
    advertised_at: int = 0
    recv_end: str | None = None  # "fin" | "reset"
    read_stopped: bool = False
    # lifecycle
    closing: bool = False
    channel_gone: bool = False
    retired: bool = False

    @property
    def wire_complete(self) -> bool:
        return self.send_end is not None and self.recv_end is not None

    @property
    def drained(self) -> bool:
        return self.consumed >= self.received


class WireEngine:
    """One KPS WebRTC connection's framing, flow control and lifecycle (no I/O)."""

    def __init__(
        self, *, is_client: bool, now: float, settings: WireSettings | None = None
    ) -> None:
        self.is_client = is_client
        self.settings = settings or WireSettings()
        self._actions: list[Action] = []
        self._events: deque[ev.Event] = deque()
        self.streams: dict[int, WireStream] = {}
        self.hello_sent = False
        self.hello_received = False
        self.handshake_complete = False
        self.error: ConnectionClosed | None = None
        self._deadline: float | None = now + self.settings.hello_timeout
        self._last_activity = now
        idle = self.settings.idle_timeout
        self._idle_check: float | None = now + idle if idle else None
        # peer's grants to us
        self._peer_stream_window = 0
        self._send_max = 0
        self._sent = 0
        self._peer_max_streams = 0
        self._opened = 0
        # our grants to the peer
        s = self.settings
        self._recv_max = s.initial_max_data
        self._received = 0
        self._consumed = 0
        self._advertised_at = 0
        self._max_peer_streams = s.initial_max_streams
        self._peer_opened = 0
        self._retired_peer = 0

    # -- outputs -------------------------------------------------------------------------------
    def pop_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def next_event(self) -> ev.Event | None:
        """The oldest unreported event (``keywire.events``), None when there is none."""
        return self._events.popleft() if self._events else None

    def pop_events(self) -> list[ev.Event]:
        """Every unreported event at once (``next_event`` one at a time; use one of them)."""
        out = list(self._events)
        self._events.clear()
        return out

    def get_timer(self) -> float | None:
        timers = [t for t in (self._deadline, self._idle_check) if t is not None]
        return min(timers) if timers else None

    @property
    def closed(self) -> bool:
        return self.error is not None

    @property
    def own_parity(self) -> int:
        """RFC 8832: the DTLS client (the dialer) opens even ids, the server odd ones."""
        return 0 if self.is_client else 1

    # -- inputs from the channel layer ---------------------------------------------------------
    def control_opened(self) -> None:
        """Channel 0 is open: send HELLO, once, as its first message."""
        if self.hello_sent or self.closed:
            return
        self.hello_sent = True
        s = self.settings
        self._send_control(
            f.encode_hello(
                f.Hello(
                    f.WIRE_VERSION,
                    s.initial_max_stream_data,
                    s.initial_max_data,
                    s.initial_max_streams,
                )
            )
        )
        self._check_handshake()

    def control_received(self, message: bytes) -> None:
        if self.closed:
            return
        try:
            msg = f.decode_control(message)
        except f.WireError as exc:
            self._protocol_error(f"control channel: {exc}")
            return
        if isinstance(msg, f.ConnectionClose):
            self._terminate(ConnectionClosed(msg.code, "peer closed the connection", remote=True))
            return
        if isinstance(msg, f.Hello):
            self._on_hello(msg)
            return
        if not self.hello_received:
            self._protocol_error(f"{type(msg).__name__} before HELLO")
            return
        if isinstance(msg, f.MaxData):
            if msg.maximum > self._send_max:
                self._send_max = msg.maximum
                self._events.append(ev.CreditAvailable(None))
        elif msg.maximum > self._peer_max_streams:
            self._peer_max_streams = msg.maximum
            self._events.append(ev.CreditAvailable(None))  # openers may retry

    def _on_hello(self, hello: f.Hello) -> None:
        if self.hello_received:
            self._protocol_error("duplicate HELLO")
            return
        if hello.version != f.WIRE_VERSION:
            self._send_control(f.encode_connection_close(Code.UNSUPPORTED))
            self._terminate(
                ConnectionClosed(
                    Code.UNSUPPORTED, f"peer speaks KPS wire version {hello.version}, not 1"
                )
            )
            return
        self.hello_received = True
        self._peer_stream_window = hello.initial_max_stream_data
        self._send_max = hello.initial_max_data
        self._peer_max_streams = hello.initial_max_streams
        for stream in self.streams.values():  # staged peer streams learn their send credit now
            stream.send_max = max(stream.send_max, hello.initial_max_stream_data)
        self._check_handshake()

    def _check_handshake(self) -> None:
        if self.hello_sent and self.hello_received and not self.handshake_complete:
            self.handshake_complete = True
            self._deadline = None
            self._events.append(ev.HandshakeCompleted())

    def datagram_received(self, data: bytes) -> None:
        if not self.closed and data:
            self._events.append(ev.DatagramReceived(data))

    def channel_opened(self, channel: int) -> None:
        """The peer opened a DCEP channel: a new stream (staged if HELLO has not arrived)."""
        if self.closed:
            return
        if channel in (CONTROL_CHANNEL, DATAGRAM_CHANNEL):
            self._protocol_error(f"peer opened reserved channel {channel} as a stream")
            return
        if channel % 2 == self.own_parity:
            self._protocol_error(f"peer opened channel {channel}, which has this side's parity")
            return
        if channel in self.streams:
            self._protocol_error(f"peer reopened channel {channel} before it was retired")
            return
        self._peer_opened += 1
        if self._peer_opened > self._max_peer_streams:
            self._protocol_error(
                f"peer opened stream {self._peer_opened}, above the limit {self._max_peer_streams}"
            )
            return
        stream = WireStream(
            channel,
            local=False,
            send_max=self._peer_stream_window,
            recv_max=self.settings.initial_max_stream_data,
        )
        self.streams[channel] = stream
        self._events.append(ev.StreamOpened(channel))

    def channel_message(self, channel: int, message: bytes) -> None:
        if self.closed:
            return
        stream = self.streams.get(channel)
        if stream is None:
            self._protocol_error(f"message on channel {channel}, which carries no stream")
            return
        try:
            frame = f.decode_stream_frame(message)
        except f.WireError as exc:
            self._protocol_error(f"stream {channel}: {exc}")
            return
        match frame:
            case f.Data(payload):
                self._on_data(stream, payload)
            case f.Fin():
                if self._end_receiving(stream, "fin"):
                    self._events.append(ev.StreamData(channel, b"", True))
                    self._maybe_retire(stream)
            case f.Reset(code):
                if self._end_receiving(stream, "reset"):
                    self._events.append(ev.StreamReset(channel, code))
                    self._maybe_retire(stream)
            case f.StopSending(code):
                self._on_stop_sending(stream, code)
            case f.MaxStreamData(offset):
                if offset > stream.send_max:
                    stream.send_max = offset
                    self._events.append(ev.CreditAvailable(channel))

    def _on_data(self, stream: WireStream, payload: bytes) -> None:
        n = len(payload)
        if stream.recv_end is not None:
            self._protocol_error(f"stream {stream.id}: DATA after {stream.recv_end.upper()}")
            return
        if stream.received + n > stream.recv_max:
            self._protocol_error(
                f"stream {stream.id}: {stream.received + n} bytes exceed "
                f"the stream credit {stream.recv_max}"
            )
            return
        if self._received + n > self._recv_max:
            self._protocol_error(
                f"{self._received + n} bytes exceed the connection credit {self._recv_max}"
            )
            return
        stream.received += n
        self._received += n
        if stream.read_stopped:
            self.consumed(stream, n)  # discarded bytes count as consumed
        else:
            self._events.append(ev.StreamData(stream.id, payload))

    def _end_receiving(self, stream: WireStream, how: str) -> bool:
        if stream.recv_end is not None:
            self._protocol_error(
                f"stream {stream.id}: {how.upper()} after {stream.recv_end.upper()}"
            )
            return False
        stream.recv_end = how
        return True

    def _on_stop_sending(self, stream: WireStream, code: int) -> None:
        if stream.stop_code is not None:
            return  # a duplicate STOP_SENDING is ignored
        stream.stop_code = code
        self._events.append(ev.StopSendingReceived(stream.id, code))
        if stream.send_end is None:
            stream.send_end = "reset"
            self._actions.append(SendMessage(stream.id, f.encode_reset(code)))
            self._maybe_retire(stream)

    def channel_closed(self, channel: int) -> None:
        """Channel ``channel`` closed (either side asked); only legal once wire-complete."""
        if self.closed:
            return
        if channel in (CONTROL_CHANNEL, DATAGRAM_CHANNEL):
            self._protocol_error(f"reserved channel {channel} closed while the connection is up")
            return
        stream = self.streams.pop(channel, None)
        if stream is None:
            return
        if not stream.wire_complete:
            self._protocol_error(f"stream {channel} closed before both halves ended")
            return
        stream.channel_gone = True
        self._maybe_retire(stream)

    def violation(self, reason: str) -> None:
        """The channel layer saw the peer break the rules (a text message, a DCEP on an id in
        use): close with protocol-error like any framing violation."""
        if not self.closed:
            self._protocol_error(reason)

    def transport_lost(self, reason: str) -> None:
        """ICE, DTLS or SCTP died underneath: network-error, nothing more can be sent."""
        if not self.closed:
            self._terminate(ConnectionClosed(Code.NETWORK_ERROR, reason), send=False)

    def activity(self, now: float) -> None:
        """A packet arrived from the peer (cheap: called per packet; the timer catches up)."""
        self._last_activity = now

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            if self.hello_sent:
                self._send_control(f.encode_connection_close(Code.TIMEOUT))
            self._terminate(
                ConnectionClosed(Code.TIMEOUT, f"no HELLO within {self.settings.hello_timeout:g} s")
            )
            return
        idle = self.settings.idle_timeout
        if self._idle_check is not None and now >= self._idle_check:
            if now - self._last_activity >= idle:
                if self.hello_sent:
                    self._send_control(f.encode_connection_close(Code.TIMEOUT))
                self._terminate(
                    ConnectionClosed(Code.TIMEOUT, f"nothing from the peer for {idle:g} s"),
                    send=False,
                )
            else:
                self._idle_check = self._last_activity + idle

    # -- inputs from the application -----------------------------------------------------------
    def open_stream(self) -> WireStream | None:
        """A new stream, or None while the peer's MAX_STREAMS is reached."""
        self._check_usable()
        if self._opened >= self._peer_max_streams:
            return None
        channel = 2 + self.own_parity
        while channel in self.streams:
            channel += 2
        if channel > 65534:
            return None
        self._opened += 1
        stream = WireStream(
            channel,
            local=True,
            send_max=self._peer_stream_window,
            recv_max=self.settings.initial_max_stream_data,
        )
        self.streams[channel] = stream
        self._actions.append(OpenChannel(channel))
        return stream

    def send(self, stream: WireStream, data: bytes | memoryview) -> int:
        """Frame as much of ``data`` as both credits allow; returns how many bytes were taken."""
        self._writable(stream)
        channel = stream.id
        grant = min(len(data), stream.send_max - stream.sent, self._send_max - self._sent)
        if grant <= 0:
            return 0
        view = memoryview(data)
        for start in range(0, grant, f.MAX_DATA_PAYLOAD):
            chunk = view[start : min(grant, start + f.MAX_DATA_PAYLOAD)]
            self._actions.append(SendMessage(channel, b"\x00" + chunk.tobytes()))
        stream.sent += grant
        self._sent += grant
        return grant

    def credit(self, stream: WireStream) -> int:
        """Bytes ``stream`` may send right now."""
        return max(0, min(stream.send_max - stream.sent, self._send_max - self._sent))

    def close_write(self, stream: WireStream) -> None:
        self._writable(stream)
        stream.send_end = "fin"
        self._actions.append(SendMessage(stream.id, f.encode_fin()))
        self._maybe_retire(stream)

    def reset(self, stream: WireStream, code: int) -> None:
        if self.closed or stream.retired or stream.send_end is not None:
            return
        stream.send_end = "reset"
        self._actions.append(SendMessage(stream.id, f.encode_reset(code)))
        self._maybe_retire(stream)

    def stop_sending(self, stream: WireStream, code: int) -> None:
        if self.closed or stream.retired or stream.read_stopped:
            return
        stream.read_stopped = True
        if stream.recv_end is None:
            self._actions.append(SendMessage(stream.id, f.encode_stop_sending(code)))
        self._maybe_retire(stream)

    def consumed(self, stream: WireStream, n: int) -> None:
        """The application took (or dropped) ``n`` bytes of ``stream``: grant credit."""
        if self.closed or n <= 0:
            return
        self._consumed += n
        s = self.settings
        if self._consumed - self._advertised_at >= s.initial_max_data // 2:
            self._advertised_at = self._consumed
            self._recv_max = self._consumed + s.initial_max_data
            self._send_control(f.encode_max_data(self._recv_max))
        stream.consumed += n
        window = s.initial_max_stream_data
        if (
            stream.recv_end is None
            and not stream.read_stopped
            and not stream.channel_gone
            and stream.consumed - stream.advertised_at >= window // 2
        ):
            stream.advertised_at = stream.consumed
            stream.recv_max = stream.consumed + window
            self._actions.append(SendMessage(stream.id, f.encode_max_stream_data(stream.recv_max)))
        self._maybe_retire(stream)

    def send_datagram(self, data: bytes) -> None:
        self._check_usable()
        if len(data) > MAX_DATAGRAM_SIZE:
            raise DatagramTooLarge(len(data), MAX_DATAGRAM_SIZE)
        self._actions.append(SendDatagram(bytes(data)))

    def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Close the connection: CONNECTION_CLOSE(code) on channel 0, then tear down."""
        if self.closed:
            return
        if self.hello_sent:
            self._send_control(f.encode_connection_close(code))
        self._terminate(ConnectionClosed(code, reason or "closed locally"))

    # -- internals -----------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self.error is not None:
            raise self.error
        if not self.handshake_complete:
            raise ConnectionClosed(Code.PROTOCOL_ERROR, "the HELLO exchange has not finished")

    def _writable(self, stream: WireStream) -> None:
        if self.error is not None:
            raise StreamError(self._stream_code(), f"connection closed: {self.error}")
        channel = stream.id
        if stream.stop_code is not None:
            raise StreamError(stream.stop_code, "the peer asked to stop sending", remote=True)
        if stream.send_end is not None:
            what = "close_write" if stream.send_end == "fin" else "reset"
            raise StreamError(Code.CLOSED, f"stream {channel}: write after {what}")

    def _stream_code(self) -> int:
        assert self.error is not None
        return self.error.code if self.error.code != Code.NONE else Code.CLOSED

    def _maybe_retire(self, stream: WireStream) -> None:
        if (
            stream.closing
            or stream.retired
            or not stream.wire_complete
            or not stream.drained
            or self.closed
        ):
            return
        stream.closing = True
        if not stream.channel_gone:
            self._actions.append(CloseChannel(stream.id))
        self._retire(stream)

    def _retire(self, stream: WireStream) -> None:
        if stream.retired:
            return
        stream.retired = True
        self._events.append(ev.StreamClosed(stream.id))
        if not stream.local:
            self._retired_peer += 1
            self._max_peer_streams = self.settings.initial_max_streams + self._retired_peer
            self._send_control(f.encode_max_streams(self._max_peer_streams))

    def _send_control(self, message: bytes) -> None:
        self._actions.append(SendMessage(CONTROL_CHANNEL, message))

    def _protocol_error(self, reason: str) -> None:
        if self.hello_sent:
            self._send_control(f.encode_connection_close(Code.PROTOCOL_ERROR))
        self._terminate(ConnectionClosed(Code.PROTOCOL_ERROR, reason))

    def _terminate(self, error: ConnectionClosed, *, send: bool = True) -> None:
        self.error = error
        self._deadline = None
        self._idle_check = None
        self._events.append(_terminated(error))
        self._actions.append(CloseTransport(error.wire_code, flush=send and self.hello_sent))
