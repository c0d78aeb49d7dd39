"""The sans-IO session with no sockets: exact bytes, windows, codes, limits, timers, errors."""

from __future__ import annotations

import pytest

from keywire.errors import Code, ConnectionClosed, StreamError
from keywire.events import (
    ConnectionTerminated,
    CreditAvailable,
    Event,
    StopSendingReceived,
    StreamClosed,
    StreamData,
    StreamOpened,
    StreamReset,
)
from keywire.mux.frame import INITIAL_WINDOW, Flag, FrameType, decode_header, encode_header
from keywire.mux.session import MuxConfig, MuxSession

WINDOW = INITIAL_WINDOW  # the smallest window keeps the numbers readable
CONFIG = MuxConfig(window=WINDOW, max_window=WINDOW, keepalive_interval=None)

W, D, P, G = FrameType.WINDOW_UPDATE, FrameType.DATA, FrameType.PING, FrameType.GO_AWAY


def frame(kind: int, flags: int, sid: int, length: int, payload: bytes = b"") -> bytes:
    return encode_header(kind, flags, sid, length) + payload


def hx(data: bytes) -> str:
    return data.hex()


class Link:
    """Two sessions joined back to back; ``flush`` carries bytes until both are quiet."""

    def __init__(self, config: MuxConfig = CONFIG, server_config: MuxConfig | None = None) -> None:
        self.client = MuxSession(client=True, config=config)
        self.server = MuxSession(client=False, config=server_config or config)
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.now = 0.0

    def flush(self) -> None:
        for _ in range(100):
            a = self.client.data_to_send()
            b = self.server.data_to_send()
            if not a and not b:
                break
            self.server.receive_data(a, self.now)
            self.client.receive_data(b, self.now)
        self.client_events += self.client.events()
        self.server_events += self.server.events()

    def take(self, side: str) -> list[Event]:
        events = self.client_events if side == "client" else self.server_events
        out = list(events)
        events.clear()
        return out


def data_of(events: list[Event], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, StreamData) and e.stream_id == sid)


# -- opening and the exact bytes ------------------------------------------------------------------
def test_client_opens_odd_ids_with_a_syn_window_update() -> None:
    s = MuxSession(client=True, config=CONFIG)
    assert s.open_stream() == 1
    assert s.open_stream() == 3
    assert hx(s.data_to_send()) == ("000100010000000100000000000100010000000300000000")


def test_server_opens_even_ids() -> None:
    s = MuxSession(client=False, config=CONFIG)
    assert s.open_stream() == 2
    assert s.open_stream() == 4


def test_larger_window_is_announced_in_syn_and_ack() -> None:
    big = MuxConfig(window=1024 * 1024, max_window=1024 * 1024, keepalive_interval=None)
    client = MuxSession(client=True, config=big)
    client.open_stream()
    syn = client.data_to_send()
    assert syn == frame(W, Flag.SYN, 1, 768 * 1024)
    server = MuxSession(client=False, config=big)
    server.receive_data(syn, 0)
    assert server.events() == [StreamOpened(1), CreditAvailable(1)]
    assert server.data_to_send() == frame(W, Flag.ACK, 1, 768 * 1024)
    assert server.send_window(1) == 1024 * 1024  # 256 KiB initial + the SYN's delta


def test_open_send_fin_round_trip() -> None:
    link = Link()
    sid = link.client.open_stream()
    assert link.client.send(sid, b"hello") == 5
    link.client.close_write(sid)
    link.flush()
    events = link.take("server")
    assert events == [StreamOpened(1), StreamData(1, b"hello"), StreamData(1, b"", True)]
    link.server.send(1, b"world")
    link.server.close_write(1)
    link.flush()
    assert link.take("client") == [
        StreamData(1, b"world"),
        StreamData(1, b"", True),
        StreamClosed(1),
    ]
    assert link.take("server") == [StreamClosed(1)]
    assert link.client.stream_count == link.server.stream_count == 0


def test_data_frame_bytes() -> None:
    s = MuxSession(client=True, config=CONFIG)
    sid = s.open_stream()
    s.data_to_send()
    s.send(sid, b"abc")
    assert hx(s.data_to_send()) == "000000000000000100000003" + b"abc".hex()


def test_payload_split_at_every_byte_boundary() -> None:
    client = MuxSession(client=True, config=CONFIG)
    sid = client.open_stream()
    client.send(sid, b"0123456789")
    client.send(sid, b"abcdef")
    client.close_write(sid)
    wire = client.data_to_send()
    server = MuxSession(client=False, config=CONFIG)
    for i in range(len(wire)):
        server.receive_data(wire[i : i + 1], 0)
    events = server.events()
    assert data_of(events, 1) == b"0123456789abcdef"
    assert events[-1] == StreamData(1, b"", True)
    assert not server.closed


def test_many_frames_in_one_read() -> None:
    link = Link()
    sids = [link.client.open_stream() for _ in range(50)]
    for sid in sids:
        link.client.send(sid, sid.to_bytes(4, "big") * 3)
    link.flush()
    events = link.take("server")
    for sid in sids:
        assert data_of(events, sid) == sid.to_bytes(4, "big") * 3


# -- windows --------------------------------------------------------------------------------------
def test_send_stops_at_the_window_and_grants_follow_consumption() -> None:
    link = Link(MuxConfig(window=WINDOW, max_frame=WINDOW, keepalive_interval=None))
    sid = link.client.open_stream()
    assert link.client.send(sid, bytes(WINDOW + 10)) == WINDOW
    assert link.client.send(sid, b"x") == 0
    assert link.client.send_window(sid) == 0
    link.flush()
    assert len(data_of(link.take("server"), sid)) == WINDOW
    # consumption below half the window grants nothing
    link.server.consumed(sid, WINDOW // 2 - 1)
    assert link.server.data_to_send() == b""
    # reaching half grants everything consumed so far, in one update
    link.server.consumed(sid, 1)
    update = link.server.data_to_send()
    assert update == frame(W, 0, sid, WINDOW // 2)
    link.client.receive_data(update, 0)
    assert link.client.events() == [CreditAvailable(sid)]
    assert link.client.send_window(sid) == WINDOW // 2


def test_max_frame_splits_big_sends() -> None:
    s = MuxSession(
        client=True, config=MuxConfig(window=WINDOW, max_frame=1000, keepalive_interval=None)
    )
    sid = s.open_stream()
    s.data_to_send()
    assert s.send(sid, bytes(5000)) == 1000


def test_data_beyond_the_window_is_a_protocol_error() -> None:
    server = MuxSession(client=False, config=CONFIG)
    server.receive_data(frame(W, Flag.SYN, 1, 0), 0)
    server.data_to_send()
    server.receive_data(frame(D, 0, 1, WINDOW) + bytes(WINDOW), 0)
    assert not server.closed
    server.receive_data(frame(D, 0, 1, 1) + b"x", 0)
    assert server.closed
    assert server.data_to_send() == frame(G, 0, 0, 1)  # GoAway(protocol error)
    terminated = server.events()[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert terminated.code == Code.PROTOCOL_ERROR and not terminated.remote
    assert "1 bytes sent with only 0 of window" in terminated.reason


def test_window_update_overflow_is_a_protocol_error() -> None:
    client = MuxSession(client=True, config=CONFIG)
    sid = client.open_stream()
    client.receive_data(frame(W, Flag.ACK, sid, 0xFFFFFFFF), 0)
    assert client.terminated is not None
    assert "overflows" in client.terminated.reason


def test_fin_carries_after_the_payload_of_its_frame() -> None:
    server = MuxSession(client=False, config=CONFIG)
    server.receive_data(frame(D, Flag.SYN | Flag.FIN, 1, 3, b"abc"), 0)
    assert server.events() == [StreamOpened(1), StreamData(1, b"abc"), StreamData(1, b"", True)]


# -- FIN / RST / STOP_SENDING codes ---------------------------------------------------------------
@pytest.mark.parametrize("code", [0, 1, 3, 6, 9, 11, 4242])
def test_reset_carries_its_code_and_ends_only_one_half(code: int) -> None:
    link = Link()
    sid = link.client.open_stream()
    link.flush()
    link.take("server")
    link.client.reset(sid, code)
    assert link.client.data_to_send() == frame(W, Flag.RST, sid, 0x100 + code)
    link.client.reset(sid, code)  # a second reset sends nothing
    assert link.client.data_to_send() == b""
    link.server.receive_data(frame(W, Flag.RST, sid, 0x100 + code), 0)
    assert link.server.events() == [StreamReset(sid, code)]
    # the server's half is still open: it can send, the client receives
    assert link.server.send(sid, b"still here") == 10
    link.flush()
    assert data_of(link.take("client"), sid) == b"still here"


def test_plain_yamux_rst_kills_both_halves_with_code_reset() -> None:
    client = MuxSession(client=True, config=CONFIG)
    sid = client.open_stream()
    client.receive_data(frame(W, Flag.ACK, sid, 0), 0)
    client.receive_data(frame(W, Flag.RST, sid, 0), 0)
    assert client.events() == [
        StreamReset(sid, Code.RESET),
        StopSendingReceived(sid, Code.RESET),
        StreamClosed(sid),
    ]
    with pytest.raises(StreamError) as info:
        client.send(sid, b"x")
    assert info.value.code == Code.CLOSED


def test_rst_on_a_data_frame_is_plain() -> None:
    server = MuxSession(client=False, config=CONFIG)
    server.receive_data(frame(D, Flag.SYN, 1, 2, b"hi") + frame(D, Flag.RST, 1, 1, b"!"), 0)
    events = server.events()
    assert events[:2] == [StreamOpened(1), StreamData(1, b"hi")]
    assert StreamReset(1, Code.RESET) in events
    assert StopSendingReceived(1, Code.RESET) in events


def test_stop_sending_makes_the_peer_reset_with_the_same_code() -> None:
    link = Link()
    sid = link.client.open_stream()
    link.client.send(sid, b"request")
    link.flush()
    link.take("server")
    link.server.stop_sending(sid, Code.PERMISSION_DENIED)
    assert link.server.data_to_send() == frame(W, Flag.STOP_SENDING, sid, 0x10A)
    link.client.receive_data(frame(W, Flag.STOP_SENDING, sid, 0x10A), 0)
    assert link.client.events() == [StopSendingReceived(sid, Code.PERMISSION_DENIED)]
    assert link.client.data_to_send() == frame(W, Flag.RST, sid, 0x10A)
    with pytest.raises(StreamError):
        link.client.send(sid, b"more")
    link.server.receive_data(frame(W, Flag.RST, sid, 0x10A), 0)
    assert link.server.events() == [StreamReset(sid, Code.PERMISSION_DENIED)]


def test_data_after_stop_sending_is_dropped_and_not_granted() -> None:
    link = Link(MuxConfig(window=WINDOW, max_frame=WINDOW, keepalive_interval=None))
    sid = link.client.open_stream()
    link.flush()
    link.server.stop_sending(sid, 1)
    link.server.data_to_send()  # lost in flight: the client keeps sending
    link.server.receive_data(frame(D, 0, sid, 1000) + bytes(1000), 0)
    assert not any(isinstance(e, StreamData) for e in link.server.events())
    link.server.consumed(sid, WINDOW)
    assert link.server.data_to_send() == b""
    assert not link.server.closed


def test_stop_sending_without_a_code_field_is_a_protocol_error() -> None:
    client = MuxSession(client=True, config=CONFIG)
    sid = client.open_stream()
    client.receive_data(frame(W, Flag.STOP_SENDING, sid, 5), 0)
    assert client.terminated is not None
    assert client.terminated.code == Code.PROTOCOL_ERROR
    assert "STOP_SENDING without a code field" in client.terminated.reason


def test_codes_outside_the_field_are_refused_locally() -> None:
    s = MuxSession(client=True, config=CONFIG)
    sid = s.open_stream()
    with pytest.raises(ValueError, match="outside"):
        s.reset(sid, 1 << 20)
    with pytest.raises(ValueError, match="outside"):
        s.stop_sending(sid, -1)
    with pytest.raises(ValueError, match="outside"):
        s.close(1 << 16)


def test_stream_is_forgotten_only_when_both_halves_end() -> None:
    link = Link()
    sid = link.client.open_stream()
    link.client.close_write(sid)
    link.flush()
    assert link.client.stream_count == 1
    link.server.reset(sid, 5)
    link.flush()
    assert link.take("client")[-1] == StreamClosed(sid)
    assert link.client.stream_count == 0
    assert link.server.stream_count == 0


# -- stream limits --------------------------------------------------------------------------------
def test_excess_streams_are_refused_with_queue_full() -> None:
    config = MuxConfig(window=WINDOW, max_streams=2, keepalive_interval=None)
    greedy = MuxConfig(window=WINDOW, max_streams=10, keepalive_interval=None)
    link = Link(greedy, server_config=config)
    sids = [link.client.open_stream() for _ in range(3)]
    link.client.send(sids[2], b"lost")
    link.flush()
    opened = [e for e in link.take("server") if isinstance(e, StreamOpened)]
    assert [e.stream_id for e in opened] == sids[:2]
    client_events = link.take("client")
    assert StreamReset(sids[2], Code.QUEUE_FULL) in client_events
    assert StopSendingReceived(sids[2], Code.QUEUE_FULL) in client_events
    assert StreamClosed(sids[2]) in client_events
    # once a stream ends on both sides, a new one fits
    link.client.close_write(sids[0])
    link.server.close_write(sids[0])
    link.flush()
    new = link.client.open_stream()
    link.flush()
    assert StreamOpened(new) in link.take("server")


def test_opener_stops_at_its_own_limit() -> None:
    s = MuxSession(client=True, config=MuxConfig(max_streams=2, keepalive_interval=None))
    s.open_stream()
    s.open_stream()
    assert not s.can_open_stream()
    with pytest.raises(StreamError) as info:
        s.open_stream()
    assert info.value.code == Code.QUEUE_FULL


# -- GoAway ---------------------------------------------------------------------------------------
def test_close_sends_queued_frames_before_the_go_away_and_abort_drops_them() -> None:
    closing, aborting = Link(), Link()
    for link, end in ((closing, "close"), (aborting, "abort")):
        sid = link.client.open_stream()
        link.flush()
        assert link.client.send(sid, b"tail") == 4
        getattr(link.client, end)(Code.CANCELLED)
    assert closing.client.data_to_send() == frame(D, 0, 1, 4, b"tail") + frame(G, 0, 0, 0x101)
    assert aborting.client.data_to_send() == frame(G, 0, 0, 0x101)
    assert aborting.client.events()[-1] == ConnectionTerminated(
        Code.CANCELLED, "aborted locally", False
    )


@pytest.mark.parametrize(("code", "field"), [(0, 0), (6, 1), (11, 2), (4, 0x104), (2, 0x102)])
def test_close_sends_go_away_with_the_code(code: int, field: int) -> None:
    link = Link()
    sid = link.client.open_stream()
    link.flush()
    link.client.close(code, "bye")
    wire = link.client.data_to_send()
    assert wire == frame(G, 0, 0, field)
    assert link.client.events()[-1] == ConnectionTerminated(code, "bye", False)
    link.server.receive_data(wire, 0)
    terminated = link.server.events()[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert terminated.code == code and terminated.remote
    error = terminated.error()
    assert isinstance(error, ConnectionClosed) and error.code == code
    with pytest.raises(ConnectionClosed):
        link.server.send(sid, b"x")
    with pytest.raises(ConnectionClosed):
        link.client.open_stream()


def test_nothing_happens_after_termination() -> None:
    s = MuxSession(client=True, config=CONFIG)
    s.close(0)
    s.data_to_send()
    s.events()
    s.receive_data(b"\xff" * 40, 0)
    s.handle_timer(1e9)
    s.receive_eof()
    assert s.data_to_send() == b""
    assert s.events() == []
    assert s.next_deadline() is None


# -- keep-alive -----------------------------------------------------------------------------------
def test_keepalive_ping_and_answer() -> None:
    config = MuxConfig(max_window=WINDOW, keepalive_interval=10.0, keepalive_timeout=2.0)
    client = MuxSession(client=True, config=config, now=100.0)
    server = MuxSession(client=False, config=config, now=100.0)
    assert client.next_deadline() == 110.0
    client.handle_timer(109.9)
    assert client.data_to_send() == b""
    client.handle_timer(110.0)
    ping = client.data_to_send()
    assert ping == frame(P, Flag.SYN, 0, 1)
    assert client.next_deadline() == 112.0
    server.receive_data(ping, 110.5)
    pong = server.data_to_send()
    assert pong == frame(P, Flag.ACK, 0, 1)
    client.receive_data(pong, 110.5)
    assert client.rtt == pytest.approx(0.5)
    assert client.next_deadline() == 120.5
    client.handle_timer(120.5)
    assert client.data_to_send() == frame(P, Flag.SYN, 0, 2)


def test_keepalive_timeout_closes_with_timeout() -> None:
    config = MuxConfig(max_window=WINDOW, keepalive_interval=1.0, keepalive_timeout=0.5)
    client = MuxSession(client=True, config=config, now=0.0)
    client.handle_timer(1.0)
    client.data_to_send()
    client.receive_data(frame(P, Flag.ACK, 0, 999), 1.2)  # a wrong answer does not count
    client.handle_timer(1.49)
    assert not client.closed
    client.handle_timer(1.5)
    assert client.terminated is not None
    assert client.terminated.code == Code.TIMEOUT
    assert client.data_to_send() == frame(G, 0, 0, 0x104)
    assert client.next_deadline() is None


def test_keepalive_off_has_no_deadline() -> None:
    assert MuxSession(client=True, config=CONFIG).next_deadline() is None


# -- protocol errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (bytes.fromhex("010000000000000100000000"), "unsupported yamux version 1"),
        (bytes.fromhex("000900000000000100000000"), "unknown frame type 9"),
        (frame(D, 0, 0, 0), "stream 0"),
        (frame(W, Flag.SYN, 1, 0), "has our parity"),
        (frame(D, 0, 7, 0), "stream 7, which was never opened"),
        (frame(D, 0, 4, 0), "stream 4, which was never opened"),
        (frame(P, Flag.SYN, 3, 0), "ping on stream 3"),
        (frame(G, 0, 2, 0), "GoAway on stream 2"),
        (frame(W, Flag.SYN, 2, 0) + frame(W, Flag.SYN, 2, 0), "opened stream 2 again"),
        (frame(W, Flag.SYN, 4, 0) + frame(W, Flag.SYN, 2, 0), "ids must grow"),
        (frame(W, Flag.SYN | Flag.FIN, 2, 0) + frame(W, Flag.FIN, 2, 0), "FIN after"),
        (frame(W, Flag.SYN | Flag.FIN, 2, 0) + frame(D, 0, 2, 1, b"x"), "data after"),
        (frame(D, Flag.SYN, 2, INITIAL_WINDOW + 1), "with only 262144 of window"),
        (frame(D, Flag.SYN, 2, 1 << 31), "exceeds the limit"),
    ],
)
def test_protocol_errors_send_go_away_and_close(wire: bytes, reason: str) -> None:
    client = MuxSession(client=True, config=CONFIG)
    client.receive_data(wire, 0)
    assert client.terminated is not None, reason
    assert client.terminated.code == Code.PROTOCOL_ERROR
    assert reason in client.terminated.reason
    assert client.data_to_send().endswith(frame(G, 0, 0, 1))


def test_eof_without_go_away_is_a_network_error() -> None:
    s = MuxSession(client=True, config=CONFIG)
    s.receive_data(frame(W, Flag.SYN, 2, 0)[:5], 0)
    s.receive_eof()
    assert s.terminated is not None
    assert s.terminated.code == Code.NETWORK_ERROR
    assert "in the middle of a frame" in s.terminated.reason
    assert s.data_to_send() == b""  # nothing to say on a dead pipe


def test_late_frames_for_ended_streams_are_ignored() -> None:
    link = Link()
    sid = link.client.open_stream()
    link.client.close_write(sid)
    link.flush()
    link.server.close_write(sid)
    link.flush()
    assert link.client.stream_count == 0
    link.client.receive_data(frame(W, 0, sid, 100) + frame(D, 0, sid, 3, b"old"), 0)
    assert not link.client.closed
    assert [e for e in link.client.events() if isinstance(e, StreamData)] == []


def test_unknown_flags_are_ignored() -> None:
    server = MuxSession(client=False, config=CONFIG)
    server.receive_data(frame(D, Flag.SYN | 0x4000, 1, 2, b"ok"), 0)
    assert server.events() == [StreamOpened(1), StreamData(1, b"ok")]


def test_ping_from_peer_is_answered_with_the_same_value() -> None:
    s = MuxSession(client=False, config=CONFIG)
    s.receive_data(frame(P, Flag.SYN, 0, 0xCAFEBABE), 0)
    assert s.data_to_send() == frame(P, Flag.ACK, 0, 0xCAFEBABE)
    assert s.control_backlog == 0


def test_control_backlog_counts_answers() -> None:
    s = MuxSession(client=False, config=CONFIG)
    s.receive_data(frame(P, Flag.SYN, 0, 1) * 100, 0)
    assert s.control_backlog == 1200
    assert len(s.data_to_send()) == 1200


def test_decoded_header_is_what_we_sent() -> None:
    s = MuxSession(client=True, config=CONFIG)
    s.open_stream()
    assert decode_header(s.data_to_send()).type == FrameType.WINDOW_UPDATE


# -- window auto-tuning ---------------------------------------------------------------------------
TUNED = MuxConfig(
    window=WINDOW, max_window=4 * WINDOW, connection_window=64 * WINDOW, keepalive_interval=None
)


def tuned_pair(config: MuxConfig = TUNED) -> tuple[MuxSession, MuxSession]:
    """A client that sends and a server whose round trip is measured as 10 ms."""
    client = MuxSession(client=True, config=config, now=0.0)
    server = MuxSession(client=False, config=config, now=0.0)
    probe = server.data_to_send()
    assert probe == frame(P, Flag.SYN, 0, 1)  # auto-tuning measures the round trip first
    client.receive_data(probe, 0.005)
    assert client.data_to_send() == frame(P, Flag.SYN, 0, 1) + frame(P, Flag.ACK, 0, 1)
    server.receive_data(frame(P, Flag.ACK, 0, 1), 0.010)
    assert server.rtt == pytest.approx(0.010)
    assert server.next_deadline() is None  # keep-alive off: the probe has no deadline
    client.open_stream()
    server.receive_data(client.data_to_send(), 0.010)
    server.data_to_send()
    server.events()
    return client, server


def test_window_doubles_when_the_reader_keeps_up() -> None:
    _client, server = tuned_pair()
    server.receive_data(frame(D, 0, 1, WINDOW // 2) + bytes(WINDOW // 2), 0.011)
    server.consumed(1, WINDOW // 2, now=0.015)  # drained within 2 round trips of opening
    assert server.data_to_send() == frame(W, 0, 1, WINDOW // 2 + WINDOW)
    # the peer may now send 1.5 windows more: 2 windows in all, none of it over the limit
    server.receive_data(frame(D, 0, 1, WINDOW + WINDOW // 2) + bytes(WINDOW + WINDOW // 2), 0.02)
    assert not server.closed
    server.consumed(1, WINDOW, now=0.03)  # half of the new 2-window size: grows to 4
    assert server.data_to_send() == frame(W, 0, 1, WINDOW + 2 * WINDOW)
    server.receive_data(frame(D, 0, 1, 3 * WINDOW) + bytes(3 * WINDOW), 0.04)
    server.consumed(1, 2 * WINDOW, now=0.045)  # at max_window: no more growth
    assert server.data_to_send() == frame(W, 0, 1, 2 * WINDOW)


def test_window_stays_when_the_reader_is_slow() -> None:
    _client, server = tuned_pair()
    server.receive_data(frame(D, 0, 1, WINDOW) + bytes(WINDOW), 0.011)
    server.consumed(1, WINDOW // 2, now=5.0)  # half a window took seconds: the app is slow
    assert server.data_to_send() == frame(W, 0, 1, WINDOW // 2)
    server.receive_data(frame(D, 0, 1, WINDOW // 2 + 1) + bytes(WINDOW // 2 + 1), 5.1)
    assert server.closed  # one byte beyond the unchanged window


def test_growth_stops_at_the_connection_budget() -> None:
    config = MuxConfig(
        window=WINDOW,
        max_window=8 * WINDOW,
        connection_window=WINDOW * 3 // 2,
        keepalive_interval=None,
    )
    client, server = tuned_pair(config)
    server.receive_data(frame(D, 0, 1, WINDOW // 2) + bytes(WINDOW // 2), 0.011)
    server.consumed(1, WINDOW // 2, now=0.012)
    # 1 window in use, budget 1.5: grows by half a window only
    assert server.data_to_send() == frame(W, 0, 1, WINDOW)
    second = client.open_stream()
    server.receive_data(client.data_to_send(), 0.013)
    assert server.data_to_send() == frame(W, Flag.ACK, second, 0)
    server.receive_data(frame(D, 0, second, WINDOW // 2) + bytes(WINDOW // 2), 0.013)
    server.consumed(second, WINDOW // 2, now=0.014)
    assert server.data_to_send() == frame(W, 0, second, WINDOW // 2)  # no room left


def test_fixed_window_sends_no_probe() -> None:
    assert MuxSession(client=True, config=CONFIG).data_to_send() == b""
