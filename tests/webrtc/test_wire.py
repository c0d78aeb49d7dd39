"""The wire v1 engine with no I/O: two engines wired back to back, and a scripted bad peer.

Covers KPS's engine suite: HELLO rules, credit at both levels, MAX_STREAMS and retirement,
STOP_SENDING → RESET, cancelRead withholding credit, and every adversarial row (each must end
the connection with protocol-error, or unsupported for a bad version).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire import events as ev
from keywire.errors import Code, ConnectionClosed, DatagramTooLarge, StreamError
from keywire.kps.webrtc import frames as f
from keywire.kps.webrtc import wire as w

SMALL = w.WireSettings(initial_max_stream_data=1000, initial_max_data=3000, initial_max_streams=2)


class Link:
    """Delivers each engine's actions to the other, as an SCTP association in order would."""

    def __init__(self, a: w.WireEngine, b: w.WireEngine) -> None:
        self.a, self.b = a, b
        self.events: dict[int, list[ev.Event]] = {id(a): [], id(b): []}
        self.closed_channels: list[int] = []
        self.torn_down: list[w.WireEngine] = []

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                self.events[id(src)].extend(src.pop_events())
                for action in src.pop_actions():
                    moved = True
                    self.deliver(src, dst, action)
            for eng in (self.a, self.b):
                self.events[id(eng)].extend(eng.pop_events())

    def deliver(self, src: w.WireEngine, dst: w.WireEngine, action: w.Action) -> None:
        if src in self.torn_down:
            return
        match action:
            case w.SendMessage(0, data):
                dst.control_received(data)
            case w.SendMessage(channel, data):
                dst.channel_message(channel, data)
            case w.OpenChannel(channel):
                dst.channel_opened(channel)
            case w.CloseChannel(channel):
                self.closed_channels.append(channel)
                src.channel_closed(channel)
                dst.channel_closed(channel)
            case w.SendDatagram(data):
                dst.datagram_received(data)
            case w.CloseTransport():
                self.torn_down.append(src)

    def of(self, eng: w.WireEngine, kind: type) -> list[ev.Event]:
        return [e for e in self.events[id(eng)] if isinstance(e, kind)]


def pair(settings: w.WireSettings | None = None) -> tuple[w.WireEngine, w.WireEngine, Link]:
    client = w.WireEngine(is_client=True, now=0.0, settings=settings)
    server = w.WireEngine(is_client=False, now=0.0, settings=settings)
    link = Link(client, server)
    client.control_opened()
    server.control_opened()
    link.pump()
    return client, server, link


def test_hello_exchange_completes_both() -> None:
    client, server, link = pair()
    assert client.handshake_complete and server.handshake_complete
    assert link.of(client, ev.HandshakeCompleted) and link.of(server, ev.HandshakeCompleted)
    assert client.get_timer() == 30.0  # the HELLO deadline is gone; the idle check remains


def test_hello_is_first_and_26_bytes() -> None:
    eng = w.WireEngine(is_client=True, now=0.0)
    eng.control_opened()
    eng.control_opened()
    sent = [a for a in eng.pop_actions() if isinstance(a, w.SendMessage)]
    assert len(sent) == 1 and sent[0].channel == 0 and len(sent[0].data) == 26
    assert sent[0].data[:2] == b"\x01\x01"


def test_stream_echo_and_fin_retires() -> None:
    client, server, link = pair()
    cs = client.open_stream()
    assert cs is not None and cs.id == 2
    assert client.send(cs, b"hello") == 5
    client.close_write(cs)
    link.pump()
    assert link.of(server, ev.StreamOpened) == [ev.StreamOpened(2)]
    assert link.of(server, ev.StreamData) == [
        ev.StreamData(2, b"hello"),
        ev.StreamData(2, b"", True),
    ]
    ss = server.streams[2]
    server.consumed(ss, 5)
    server.send(ss, b"HELLO")
    server.close_write(ss)
    link.pump()
    assert link.of(client, ev.StreamData) == [
        ev.StreamData(2, b"HELLO"),
        ev.StreamData(2, b"", True),
    ]
    # server is wire-complete and drained: it closes the channel and grants a stream
    assert 2 in link.closed_channels
    assert link.of(server, ev.StreamClosed) == [ev.StreamClosed(2)]
    assert 2 not in server.streams and 2 not in client.streams


def test_server_streams_are_odd() -> None:
    client, server, link = pair()
    ss = server.open_stream()
    assert ss is not None and ss.id == 3
    link.pump()
    assert link.of(client, ev.StreamOpened) == [ev.StreamOpened(3)]


def test_stream_credit_blocks_and_partial_grant() -> None:
    client, server, link = pair(SMALL)
    cs = client.open_stream()
    assert cs is not None
    assert client.send(cs, bytes(1500)) == 1000  # partial grant up to the stream window
    assert client.send(cs, b"x") == 0
    link.pump()
    ss = server.streams[cs.id]
    server.consumed(ss, 499)
    link.pump()
    assert client.credit(cs) == 0  # below half a window: no re-advertisement yet
    server.consumed(ss, 1)
    link.pump()
    assert link.of(client, ev.CreditAvailable)
    assert client.credit(cs) == 500
    assert client.send(cs, bytes(600)) == 500


def test_connection_credit_limits_all_streams() -> None:
    client, server, link = pair(SMALL)
    streams = [client.open_stream(), client.open_stream()]
    assert all(s is not None for s in streams)
    a, b = streams
    assert a is not None and b is not None
    assert client.send(a, bytes(1000)) == 1000
    assert client.send(b, bytes(1000)) == 1000
    # 2000 of 3000 used; a third stream is refused by MAX_STREAMS, so check the conn bound
    link.pump()
    server.consumed(server.streams[a.id], 1000)
    link.pump()
    assert client.credit(a) == 1000
    assert client.send(a, bytes(1000)) == 1000
    assert client.credit(a) == 0  # connection-level credit (3000) is spent
    server.consumed(server.streams[b.id], 500)
    link.pump()  # 1500 consumed ≥ half of 3000: MAX_DATA = 4500
    assert client.credit(a) == 0  # stream a is at its own limit 2000? no: 1000+1000
    assert client.credit(b) == 500  # b: stream window re-opened by 500, connection has room


def test_max_streams_blocks_until_retired() -> None:
    client, server, link = pair(SMALL)
    a = client.open_stream()
    b = client.open_stream()
    assert a is not None and b is not None
    assert client.open_stream() is None
    client.close_write(a)
    link.pump()
    sa = server.streams[a.id]
    server.close_write(sa)
    link.pump()  # server wire-complete and drained → closes channel, MAX_STREAMS 3
    assert ev.CreditAvailable(None) in link.of(client, ev.CreditAvailable)
    c = client.open_stream()
    assert c is not None and c.id == a.id  # the retired id is reused


def test_retirement_waits_for_unread_data() -> None:
    client, server, link = pair()
    cs = client.open_stream()
    assert cs is not None
    client.send(cs, b"unread")
    client.close_write(cs)
    link.pump()
    ss = server.streams[cs.id]
    server.close_write(ss)
    link.pump()
    assert not link.of(server, ev.StreamClosed)
    # the client is wire-complete and drained, so it closes the channel; the server still
    # withholds the MAX_STREAMS grant until its application has read the bytes
    assert cs.id in link.closed_channels
    assert cs.id not in server.streams
    server.consumed(ss, 6)
    link.pump()
    assert link.of(server, ev.StreamClosed) == [ev.StreamClosed(cs.id)]


def test_stop_sending_gets_reset_with_same_code() -> None:
    client, server, link = pair()
    cs = client.open_stream()
    assert cs is not None
    client.send(cs, b"x")
    link.pump()
    ss = server.streams[cs.id]
    server.stop_sending(ss, 9)
    server.stop_sending(ss, 9)  # once only
    link.pump()
    assert link.of(client, ev.StopSendingReceived) == [ev.StopSendingReceived(cs.id, 9)]
    assert link.of(server, ev.StreamReset) == [ev.StreamReset(cs.id, 9)]
    with pytest.raises(StreamError) as err:
        client.send(cs, b"more")
    assert err.value.code == 9 and err.value.remote


def test_cancel_read_withholds_stream_credit_releases_connection_credit() -> None:
    settings = w.WireSettings(initial_max_stream_data=1000, initial_max_data=1000)
    client, server, link = pair(settings)
    cs = client.open_stream()
    assert cs is not None
    ss_id = cs.id
    client.send(cs, bytes(400))
    link.pump()
    ss = server.streams[ss_id]
    server.stop_sending(ss, 1)
    server.consumed(ss, 400)  # the shell discards the buffered bytes
    # the STOP_SENDING is still in flight when more data arrives
    server.channel_message(ss_id, f.encode_data(bytes(300)))
    actions = server.pop_actions()
    assert not any(
        isinstance(a, w.SendMessage) and a.channel == ss_id and a.data[0] == 4 for a in actions
    )  # no MAX_STREAM_DATA
    assert any(
        isinstance(a, w.SendMessage) and a.channel == 0 and a.data[0] == 2 for a in actions
    )  # MAX_DATA


def test_datagrams_and_too_large() -> None:
    client, server, link = pair()
    client.send_datagram(b"ping")
    link.pump()
    assert link.of(server, ev.DatagramReceived) == [ev.DatagramReceived(b"ping")]
    client.send_datagram(bytes(1200))
    with pytest.raises(DatagramTooLarge) as err:
        client.send_datagram(bytes(1201))
    assert err.value.code == Code.TOO_LARGE and err.value.limit == 1200


def test_close_code_reaches_peer() -> None:
    client, server, link = pair()
    client.close(6)
    link.pump()
    (term,) = link.of(server, ev.ConnectionTerminated)
    assert term.code == 6 and term.remote and term.error().remote
    assert server.closed and client.closed


def test_hello_timeout_closes_with_timeout() -> None:
    eng = w.WireEngine(is_client=False, now=100.0)
    eng.control_opened()
    assert eng.get_timer() == 115.0
    eng.handle_timer(114.9)
    assert not eng.closed
    eng.handle_timer(115.0)
    assert eng.error is not None and eng.error.code == Code.TIMEOUT
    sent = [a.data for a in eng.pop_actions() if isinstance(a, w.SendMessage)]
    assert sent[-1] == f.encode_connection_close(Code.TIMEOUT)


def test_staged_streams_before_hello() -> None:
    server = w.WireEngine(is_client=False, now=0.0)
    server.control_opened()
    server.pop_actions()
    server.channel_opened(2)
    server.channel_message(2, f.encode_data(b"early"))
    events = server.pop_events()
    assert ev.StreamOpened(2) in events and ev.StreamData(2, b"early") in events
    assert server.streams[2].send_max == 0
    server.control_received(f.encode_hello(f.Hello(1, 777, 10_000, 5)))
    assert server.handshake_complete and server.streams[2].send_max == 777


# -- adversarial rows: a scripted peer ---------------------------------------------------------
def ready_server() -> w.WireEngine:
    server = w.WireEngine(is_client=False, now=0.0)
    server.control_opened()
    server.control_received(f.encode_hello(f.Hello(1, 1000, 2000, 2)))
    server.pop_actions()
    server.pop_events()
    return server


def closed_with(eng: w.WireEngine, code: int) -> ConnectionClosed:
    assert eng.error is not None, "the engine should have closed"
    assert eng.error.code == code, eng.error
    actions = eng.pop_actions()
    assert any(isinstance(a, w.CloseTransport) for a in actions)
    sent = [a.data for a in actions if isinstance(a, w.SendMessage) and a.channel == 0]
    if eng.hello_sent:
        assert sent and sent[-1] == f.encode_connection_close(code)
    return eng.error


def test_bad_hello_version_closes_unsupported() -> None:
    server = w.WireEngine(is_client=False, now=0.0)
    server.control_opened()
    server.control_received(bytes([1, 2]) + bytes(24))
    closed_with(server, Code.UNSUPPORTED)


def test_max_data_before_hello() -> None:
    server = w.WireEngine(is_client=False, now=0.0)
    server.control_opened()
    server.control_received(f.encode_max_data(10))
    assert "before HELLO" in str(closed_with(server, Code.PROTOCOL_ERROR))


def test_max_streams_before_hello() -> None:
    server = w.WireEngine(is_client=False, now=0.0)
    server.control_opened()
    server.control_received(f.encode_max_streams(10))
    closed_with(server, Code.PROTOCOL_ERROR)


def test_connection_close_before_hello_is_a_rejection() -> None:
    server = w.WireEngine(is_client=True, now=0.0)
    server.control_opened()
    server.control_received(f.encode_connection_close(10))
    assert server.error is not None and server.error.code == 10 and server.error.remote


def test_duplicate_hello() -> None:
    server = ready_server()
    server.control_received(f.encode_hello(f.Hello(1, 1, 1, 1)))
    assert "duplicate HELLO" in str(closed_with(server, Code.PROTOCOL_ERROR))


def test_truncated_control() -> None:
    server = ready_server()
    server.control_received(b"\x02\x00")
    closed_with(server, Code.PROTOCOL_ERROR)


def test_stream_credit_overrun() -> None:
    server = ready_server()  # grants 1 MiB per stream by default
    server.channel_opened(2)
    chunk = f.encode_data(bytes(f.MAX_DATA_PAYLOAD))
    for _ in range((1 << 20) // f.MAX_DATA_PAYLOAD):
        server.channel_message(2, chunk)
    assert not server.closed
    server.channel_message(2, chunk)
    assert "exceed the stream credit" in str(closed_with(server, Code.PROTOCOL_ERROR))


def test_connection_credit_overrun() -> None:
    server = w.WireEngine(
        is_client=False,
        now=0.0,
        settings=w.WireSettings(initial_max_stream_data=1000, initial_max_data=1500),
    )
    server.control_opened()
    server.control_received(f.encode_hello(f.Hello(1, 1000, 2000, 2)))
    server.channel_opened(2)
    server.channel_opened(4)
    server.channel_message(2, f.encode_data(bytes(1000)))
    server.channel_message(4, f.encode_data(bytes(501)))
    assert "connection credit" in str(closed_with(server, Code.PROTOCOL_ERROR))


def test_data_after_fin() -> None:
    server = ready_server()
    server.channel_opened(2)
    server.channel_message(2, f.encode_fin())
    server.channel_message(2, f.encode_data(b"late"))
    assert "DATA after FIN" in str(closed_with(server, Code.PROTOCOL_ERROR))


def test_second_terminal_frame() -> None:
    server = ready_server()
    server.channel_opened(2)
    server.channel_message(2, f.encode_reset(3))
    server.channel_message(2, f.encode_fin())
    closed_with(server, Code.PROTOCOL_ERROR)


@pytest.mark.parametrize("channel", [0, 1])
def test_reserved_channel_loss(channel: int) -> None:
    server = ready_server()
    server.channel_closed(channel)
    assert "reserved channel" in str(closed_with(server, Code.PROTOCOL_ERROR))


def test_mid_stream_channel_close() -> None:
    server = ready_server()
    server.channel_opened(2)
    server.channel_closed(2)
    assert "before both halves ended" in str(closed_with(server, Code.PROTOCOL_ERROR))


def test_wrong_parity_and_stream_limit() -> None:
    server = ready_server()
    server.channel_opened(3)
    closed_with(server, Code.PROTOCOL_ERROR)
    server = ready_server()
    server.channel_opened(2)
    server.channel_opened(4)
    for n in range(6, 6 + 2 * 100, 2):
        server.channel_opened(n)
        if server.closed:
            break
    assert "above the limit 100" in str(closed_with(server, Code.PROTOCOL_ERROR))


def test_poison_frame_on_stream() -> None:
    server = ready_server()
    server.channel_opened(2)
    server.channel_message(2, b"\x09junk")
    closed_with(server, Code.PROTOCOL_ERROR)


def test_message_on_unknown_channel() -> None:
    server = ready_server()
    server.channel_message(8, f.encode_data(b"x"))
    closed_with(server, Code.PROTOCOL_ERROR)


def test_dcep_on_reserved_id() -> None:
    server = ready_server()
    server.channel_opened(1)
    closed_with(server, Code.PROTOCOL_ERROR)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ctl", "open", "msg", "close", "dgram"]),
            st.integers(0, 12),
            st.binary(max_size=30),
        ),
        max_size=25,
    )
)
def test_engine_survives_any_peer(script: list[tuple[str, int, bytes]]) -> None:
    """Whatever a peer sends, the engine answers with actions and events, never an exception."""
    eng = w.WireEngine(is_client=False, now=0.0)
    eng.control_opened()
    for op, channel, data in script:
        if op == "ctl":
            eng.control_received(data)
        elif op == "open":
            eng.channel_opened(channel)
        elif op == "msg":
            eng.channel_message(channel, data)
        elif op == "close":
            eng.channel_closed(channel)
        else:
            eng.datagram_received(data)
        eng.pop_actions()
        eng.pop_events()
    if eng.closed:
        assert eng.error is not None and str(eng.error)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["open", "send", "read", "fin", "reset", "stop"]),
            st.booleans(),
            st.integers(0, 5),
            st.integers(1, 5000),
        ),
        max_size=60,
    )
)
def test_two_correct_engines_never_violate(ops: list[tuple[str, bool, int, int]]) -> None:
    """Random application behaviour on both sides: no protocol error, bytes arrive in order."""
    settings = w.WireSettings(
        initial_max_stream_data=4000, initial_max_data=9000, initial_max_streams=3
    )
    client, server, link = pair(settings)
    sent: dict[tuple[int, int], bytearray] = {}
    got: dict[tuple[int, int], bytearray] = {}
    counter = 0
    for op, from_client, pick, n in ops:
        eng = client if from_client else server
        mine = [s for s in eng.streams.values() if not s.retired]
        stream = mine[pick % len(mine)] if mine else None
        if op == "open":
            eng.open_stream()
        elif stream is None:
            pass
        elif op == "send" and stream.send_end is None and stream.stop_code is None:
            counter += 1
            data = bytes([counter % 256]) * n
            taken = eng.send(stream, data)
            sent.setdefault((id(eng), stream.id), bytearray()).extend(data[:taken])
        elif op == "read":
            unread = stream.received - stream.consumed
            if unread and not stream.read_stopped:
                eng.consumed(stream, min(unread, n))
        elif op == "fin" and stream.send_end is None and stream.stop_code is None:
            eng.close_write(stream)
        elif op == "reset":
            eng.reset(stream, 3)
        elif op == "stop":
            eng.stop_sending(stream, 1)
        link.pump()
        for e in (client, server):
            for event in link.events[id(e)]:
                if isinstance(event, ev.StreamData):
                    other = server if e is client else client
                    got.setdefault((id(other), event.stream_id), bytearray()).extend(event.data)
            link.events[id(e)].clear()
        assert not client.closed, client.error
        assert not server.closed, server.error
    for key, data in got.items():
        assert sent.get(key, bytearray()).startswith(data)


def test_idle_timeout() -> None:
    eng = w.WireEngine(
        is_client=True, now=0.0, settings=w.WireSettings(hello_timeout=100.0, idle_timeout=10.0)
    )
    eng.control_opened()
    eng.control_received(f.encode_hello(f.Hello(1, 10, 10, 1)))
    assert eng.get_timer() == 10.0
    eng.activity(7.0)
    eng.handle_timer(10.0)  # the peer spoke at 7: check again at 17
    assert not eng.closed and eng.get_timer() == 17.0
    eng.handle_timer(17.0)
    assert eng.error is not None and eng.error.code == Code.TIMEOUT
    assert "nothing from the peer for 10 s" in str(eng.error)
    off = w.WireEngine(is_client=True, now=0.0, settings=w.WireSettings(idle_timeout=0))
    off.control_opened()
    off.control_received(f.encode_hello(f.Hello(1, 10, 10, 1)))
    assert off.get_timer() is None
