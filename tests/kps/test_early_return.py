"""A dialer gets its connection at TLS completion, half a round trip before the server's
HANDSHAKE_DONE (issue 17: connect time); until then at most ``EARLY_BYTES`` go to qh3, so a
lost Finished can always be sent again (docs/kps.md, "qh3 2.1 quirks")."""

from __future__ import annotations

import asyncio
import hashlib
import os

from keywire.events import DatagramReceived, HandshakeCompleted, StreamData, StreamReset
from keywire.kps import KpsSettings, dial
from keywire.kps.quic.session import EARLY_BYTES

from .helpers import Collector, listening
from .test_session import CLIENT, SERVER, Pair
from .udp_proxy import Faults, UdpProxy


def _has_handshake_packet(datagram: bytes) -> bool:
    """True if a datagram holds a Handshake-space packet (walks coalesced long headers)."""

    def varint(at: int) -> tuple[int, int]:
        size = 1 << (datagram[at] >> 6)
        value = datagram[at] & 0x3F
        for k in range(1, size):
            value = (value << 8) | datagram[at + k]
        return value, size

    i = 0
    while i < len(datagram) and datagram[i] & 0x80:
        kind = (datagram[i] >> 4) & 3
        if kind == 2:
            return True
        j = i + 5
        j += 1 + datagram[j]  # destination connection id
        j += 1 + datagram[j]  # source connection id
        if kind == 0:  # Initial: token
            length, size = varint(j)
            j += size + length
        length, size = varint(j)
        i = j + size + length
    return False


def _to_tls_completion(pair: Pair) -> None:
    """Client Initial to the server, the server's flight back: the client's TLS is complete."""
    for data, _ in pair.client.datagrams_to_send(pair.now):
        pair._server_for(data).receive_datagram(data, CLIENT, pair.now)
    assert pair.server is not None
    for data, _ in pair.server.datagrams_to_send(pair.now):
        pair.client.receive_datagram(data, SERVER, pair.now)


def _run(pair: Pair, *, drop_handshake: int, limit: float = 5.0) -> list[object]:
    """Move datagrams both ways (dropping the client's first ``drop_handshake`` datagrams that
    carry a Handshake packet, i.e. its Finished) until ``limit`` simulated seconds pass."""
    server = pair.server
    assert server is not None
    events: list[object] = []
    start = pair.now
    while pair.now - start < limit:
        pair.now += 0.002
        for session in (pair.client, server):
            deadline = session.deadline()
            if deadline is not None and deadline <= pair.now:
                session.handle_timer(pair.now)
        for data, _ in pair.client.datagrams_to_send(pair.now):
            if drop_handshake and _has_handshake_packet(data):
                drop_handshake -= 1
                continue
            server.receive_datagram(data, CLIENT, pair.now)
        for data, _ in server.datagrams_to_send(pair.now):
            pair.client.receive_datagram(data, SERVER, pair.now)
        events += pair.events(server)
    return events


def test_the_dialer_is_handed_the_connection_at_tls_completion() -> None:
    pair = Pair()
    _to_tls_completion(pair)
    client = pair.client
    assert not client.quic._handshake_confirmed  # the server's HANDSHAKE_DONE is not here yet
    assert any(isinstance(e, HandshakeCompleted) for e in pair.events(client))
    assert client.can_open_stream() and client.max_datagram_size > 0


def test_until_handshake_done_only_early_bytes_reach_qh3_and_the_rest_follows_in_order() -> None:
    pair = Pair()
    _to_tls_completion(pair)
    client = pair.client
    first, second = client.open_stream(), client.open_stream()
    payload = bytes(range(256)) * 400  # 100 KB
    for offset in range(0, len(payload), 1000):
        client.send(first, payload[offset : offset + 1000])
        client.send(second, payload[offset : offset + 1000])
    client.send(first, b"", fin=True)
    client.send_datagram(b"held datagram")
    assert client.quic.get_send_buffer_size() <= EARLY_BYTES
    # held bytes (the datagram's too) count as queued: the send budget and close see them
    assert client.send_buffered_total() == 2 * len(payload) + len(b"held datagram")
    assert not client.all_acknowledged()
    # the Finished is lost twice: the early bytes must not keep it from going again
    events = _run(pair, drop_handshake=2)
    assert client.quic._handshake_confirmed and not client._held
    for sid in (first, second):
        got = b"".join(e.data for e in events if isinstance(e, StreamData) and e.stream_id == sid)
        assert got == payload
    fins = [e for e in events if isinstance(e, StreamData) and e.fin]
    assert [e.stream_id for e in fins] == [first]
    assert DatagramReceived(b"held datagram") in events
    assert client.all_acknowledged()


def test_a_reset_drops_what_was_held_for_its_stream_only() -> None:
    pair = Pair()
    _to_tls_completion(pair)
    client = pair.client
    kept, reset = client.open_stream(), client.open_stream()
    client.send(kept, b"k" * EARLY_BYTES)  # spends the early bytes
    client.send(reset, b"r" * 3000)
    client.send(kept, b"K" * 3000)
    assert client.send_buffered(reset) == 3000
    assert client.reset(reset, 7)
    assert client.send_buffered(reset) == 0
    events = _run(pair, drop_handshake=0, limit=1.0)
    got = b"".join(e.data for e in events if isinstance(e, StreamData) and e.stream_id == kept)
    assert got == b"k" * EARLY_BYTES + b"K" * 3000
    assert StreamReset(reset, 7) in events
    assert not [e for e in events if isinstance(e, StreamData) and e.stream_id == reset and e.data]


async def test_writes_right_after_dial_arrive_through_a_lossy_path() -> None:
    """The case the wait for HANDSHAKE_DONE guarded: a dialer that writes at once while its
    Finished may be lost. Ten dials through 15 % loss each way, 256 KB written on return."""
    payload = os.urandom(256 << 10)
    for seed in range(10):
        seen = Collector()
        async with (
            asyncio.timeout(40),
            listening(seen) as listener,
            UdpProxy(("127.0.0.1", listener.port), Faults(drop=0.15, seed=seed)) as proxy,
        ):
            conn = await dial(
                "127.0.0.1",
                proxy.port,
                listener.identity.certhash,
                KpsSettings(handshake_timeout=10),
            )
            stream = await conn.open_stream()
            await stream.write(payload)  # before HANDSHAKE_DONE, as a rule
            await stream.close_write()
            server = await seen.first(10)
            peer = await server.accept_stream()
            got = await peer.read_all()
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), seed
            await conn.close()
