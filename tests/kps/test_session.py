"""The sans-IO session core, driven by hand: two sessions, datagrams moved between them."""

from __future__ import annotations

import pytest

from keywire.errors import Code, DatagramTooLarge, StreamError
from keywire.identity import Identity
from keywire.kps import KpsSettings
from keywire.kps.quic import GatedQuicConnection, client_configuration, server_configuration
from keywire.kps.quic.session import (
    Closed,
    DatagramReceived,
    HandshakeDone,
    KpsSession,
    SessionEvent,
    StopSending,
    StreamData,
    StreamOpened,
    StreamReset,
)

CLIENT = ("127.0.0.1", 50000)
SERVER = ("127.0.0.1", 4433)


class Pair:
    """A client and a server session wired back to back, with a fake clock."""

    def __init__(self, settings: KpsSettings | None = None, pin: bytes | None = None) -> None:
        self.settings = settings or KpsSettings()
        self.identity = Identity.generate()
        self.now = 1000.0
        quic = GatedQuicConnection(
            configuration=client_configuration(pin or self.identity.cert_digest, self.settings),
            pin=pin or self.identity.cert_digest,
        )
        self.client = KpsSession(quic, connection_window=self.settings.connection_window)
        self.server: KpsSession | None = None
        self.client.connect(SERVER, self.now)

    def _server_for(self, data: bytes) -> KpsSession:
        if self.server is None:
            from qh3._hazmat import pull_quic_header

            dcid = pull_quic_header(data, 0, 8)[3]
            quic = GatedQuicConnection(
                configuration=server_configuration(self.identity, self.settings),
                original_destination_connection_id=dcid,
                max_streams=self.settings.max_streams,
            )
            self.server = KpsSession(quic, connection_window=self.settings.connection_window)
        return self.server

    def pump(self, rounds: int = 40, step: float = 0.002) -> None:
        for _ in range(rounds):
            self.now += step
            for session in (self.client, self.server):
                if session is not None:
                    deadline = session.deadline()
                    if deadline is not None and deadline <= self.now:
                        session.handle_timer(self.now)
            for data, _ in self.client.datagrams_to_send(self.now):
                self._server_for(data).receive_datagram(data, CLIENT, self.now)
            if self.server is not None:
                for data, _ in self.server.datagrams_to_send(self.now):
                    self.client.receive_datagram(data, SERVER, self.now)

    @staticmethod
    def events(session: KpsSession | None) -> list[SessionEvent]:
        assert session is not None
        out = []
        while (event := session.next_event()) is not None:
            out.append(event)
        return out


def connected(settings: KpsSettings | None = None) -> Pair:
    pair = Pair(settings)
    pair.pump()
    assert any(isinstance(e, HandshakeDone) for e in pair.events(pair.client))
    assert any(isinstance(e, HandshakeDone) for e in pair.events(pair.server))
    return pair


def test_close_write_is_a_fin() -> None:
    pair = connected()
    sid = pair.client.open_stream()
    pair.client.send(sid, b"hello", fin=True)
    pair.pump()
    events = pair.events(pair.server)
    assert StreamOpened(sid) in events
    data = [e for e in events if isinstance(e, StreamData)]
    assert b"".join(e.data for e in data) == b"hello" and data[-1].fin
    with pytest.raises(StreamError):
        pair.client.send(sid, b"after fin")


def test_reset_carries_its_code() -> None:
    pair = connected()
    sid = pair.client.open_stream()
    pair.client.send(sid, b"x")
    pair.pump()
    pair.events(pair.server)
    assert pair.client.reset(sid, 77)
    assert not pair.client.reset(sid, 78)  # the sending half already ended
    pair.pump()
    assert StreamReset(sid, 77) in pair.events(pair.server)


def test_stop_sending_makes_the_peer_reset_with_the_same_code() -> None:
    pair = connected()
    sid = pair.client.open_stream()
    pair.client.send(sid, b"x")
    pair.pump()
    pair.events(pair.server)
    assert pair.server is not None
    assert pair.server.stop_sending(sid, 9)
    pair.pump()
    assert StopSending(sid, 9) in pair.events(pair.client)
    # the client's QUIC answered RESET_STREAM(9): the server's read side ends with it
    assert StreamReset(sid, 9) in pair.events(pair.server)
    with pytest.raises(StreamError):
        pair.client.send(sid, b"more")


def test_connection_close_code_reaches_the_peer_as_an_application_close() -> None:
    pair = connected()
    pair.client.close(Code.PROTOCOL_ERROR, "bye")
    pair.pump()
    closed = [e for e in pair.events(pair.server) if isinstance(e, Closed)]
    assert len(closed) == 1
    assert closed[0].kind == "application"
    assert closed[0].error().code == Code.PROTOCOL_ERROR and closed[0].error().remote
    assert "bye" in str(closed[0].error())


def test_idle_timeout_is_reported_as_timeout() -> None:
    pair = connected(KpsSettings(idle_timeout=2.0))
    pair.now += 10
    pair.client.handle_timer(pair.now)
    closed = [e for e in pair.events(pair.client) if isinstance(e, Closed)]
    assert closed and closed[0].error().code == Code.TIMEOUT and closed[0].kind == "timeout"


def test_datagrams_flow_and_oversize_ones_are_refused_before_qh3_sees_them() -> None:
    pair = connected()
    limit = pair.client.max_datagram_size
    assert 1100 <= limit <= 1500
    pair.client.send_datagram(b"d" * limit)
    with pytest.raises(DatagramTooLarge):
        pair.client.send_datagram(b"d" * (limit + 1))
    pair.client.send_datagram(b"after")
    pair.pump()
    got = [e.data for e in pair.events(pair.server) if isinstance(e, DatagramReceived)]
    assert got == [b"d" * limit, b"after"]


def test_receive_credit_advances_only_as_the_application_reads() -> None:
    window = 64 << 10
    pair = connected(KpsSettings(stream_window=window, connection_window=2 * window))
    sid = pair.client.open_stream()
    pair.client.send(sid, b"z" * (1 << 20))
    pair.pump(200)
    server = pair.server
    assert server is not None
    received = sum(len(e.data) for e in pair.events(server) if isinstance(e, StreamData))
    # delivered bytes stop at the connection budget plus at most one stream window
    assert 2 * window <= received <= 3 * window
    assert server.gated and server.unread == received
    assert pair.client.send_buffered(sid) > 0  # the sender is blocked, not dropping
    more = 0
    for _ in range(40):  # the application reads everything it is given
        server.consumed(sid, received + more)
        received = 0
        pair.pump(20)
        more = sum(len(e.data) for e in pair.events(server) if isinstance(e, StreamData))
    total_after = more
    assert pair.client.send_buffered(sid) == 0 or total_after > 0


def test_a_peer_unidirectional_stream_is_refused_and_never_surfaces() -> None:
    pair = connected()
    quic = pair.client.quic
    sid = quic.get_next_available_stream_id(is_unidirectional=True)
    quic.send_stream_data(sid, b"uni", end_stream=True)
    pair.pump()
    events = pair.events(pair.server)
    assert not any(isinstance(e, (StreamOpened, StreamData)) for e in events)
    assert pair.server is not None and sid not in pair.server._streams


def test_the_pin_is_checked_inside_the_handshake() -> None:
    pair = Pair(pin=Identity.generate().cert_digest)
    pair.pump()
    closed = [e for e in pair.events(pair.client) if isinstance(e, Closed)]
    assert closed and not pair.client.handshake_done
    presented = pair.client.quic.peer_certificate_digest()
    assert presented == pair.identity.cert_digest
    # the server never completed its handshake either
    assert pair.server is not None and not pair.server.handshake_done


def test_the_stream_limit_is_a_setting() -> None:
    pair = connected(KpsSettings(max_streams=3))
    opened = []
    while pair.client.can_open_stream():
        sid = pair.client.open_stream()
        pair.client.send(sid, b"x")
        opened.append(sid)
        assert len(opened) <= 3
    assert len(opened) == 3


def test_the_client_hello_carries_alpn_h3_and_no_sni(monkeypatch: pytest.MonkeyPatch) -> None:
    import qh3.tls

    seen: list[object] = []
    original = qh3.tls.pull_client_hello

    def record(buf: object) -> object:
        hello = original(buf)  # type: ignore[arg-type]
        seen.append(hello)
        return hello

    monkeypatch.setattr(qh3.tls, "pull_client_hello", record)
    connected()
    assert len(seen) == 1
    hello = seen[0]
    assert getattr(hello, "server_name") is None  # noqa: B009 - no SNI for an IP literal
    assert getattr(hello, "alpn_protocols") == ["h3"]  # noqa: B009
