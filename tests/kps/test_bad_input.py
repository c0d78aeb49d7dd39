"""Bad input at a KPS listener: random datagrams, a handshake flood, fuzzed parsers."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qh3.quic.connection import QuicConnection

from keywire.address import Section, parse
from keywire.errors import AddressError, HandshakeError
from keywire.identity import Identity
from keywire.kps import KpsSettings, dial
from keywire.kps.handler import dial_target, listen_target
from keywire.kps.quic import GatedQuicConnection, client_configuration
from keywire.kps.quic.router import Action, QuicRouter
from keywire.kps.quic.session import KpsSession
from keywire.kps.udp import looks_like_stun, normalize_address
from keywire.options import Options

from .helpers import listening

pytestmark = pytest.mark.timeout(60)


def _junk(rng: random.Random) -> bytes:
    """Random datagrams, a share of them shaped like QUIC long/short headers and STUN."""
    kind = rng.randrange(5)
    size = rng.choice((0, 1, 5, 20, 64, 600, 1199, 1200, 1350, 1500))
    body = rng.randbytes(size)
    if kind == 0 and size >= 1200:  # an Initial-looking long header, version 1
        return bytes([0xC0 | rng.randrange(16)]) + b"\x00\x00\x00\x01\x08" + body[6:]
    if kind == 1 and size >= 9:  # short header
        return bytes([0x40 | rng.randrange(64)]) + body[1:]
    if kind == 2 and size >= 20:  # STUN framing
        return b"\x00\x01" + body[2:4] + b"\x21\x12\xa4\x42" + body[8:]
    if kind == 3 and size >= 1200:  # another QUIC version
        return bytes([0xC0]) + rng.randbytes(4) + b"\x08" + body[6:]
    return body


async def test_ten_thousand_random_datagrams_leave_the_listener_serving() -> None:
    async with listening(max_connections=64) as listener:
        rng = random.Random(1234)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            assert listener.demux is not None
            for i in range(1, 10_001):
                sock.sendto(_junk(rng), ("127.0.0.1", listener.port))
                if i % 50 == 0:  # pace, so the kernel does not drop what the test sends
                    for _ in range(100):
                        if listener.demux.counts["quic"] >= i - 50:
                            break
                        await asyncio.sleep(0.001)
        await asyncio.sleep(0.2)
        # no state kept for garbage: undecryptable Initials are never admitted
        assert len(listener.router) == 0
        assert listener.demux is not None and listener.demux.counts["errors"] == 0
        assert listener.demux.counts["quic"] >= 9_000  # (a few may be lost in the kernel)
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        stream = await conn.open_stream()
        await stream.write(b"still serving")
        await stream.close_write()
        assert await stream.read_all() == b"still serving"
        await conn.close()


async def test_a_handshake_flood_beyond_the_limit_is_refused_with_bounded_state() -> None:
    limit = 4
    async with listening(max_connections=limit, refusals_per_second=1000) as listener:
        held = [
            await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
            for _ in range(limit)
        ]
        # 40 more clients, each a real QUIC Initial from its own socket
        loop = asyncio.get_running_loop()
        answers: list[bytes] = []
        sockets = []
        for _ in range(40):
            quic = QuicConnection(
                configuration=client_configuration(listener.identity.cert_digest, KpsSettings())
            )
            quic.connect(("127.0.0.1", listener.port), loop.time())
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sockets.append(sock)
            for data, _ in quic.datagrams_to_send(loop.time()):
                sock.sendto(data, ("127.0.0.1", listener.port))
        await asyncio.sleep(0.3)
        for sock in sockets:
            try:
                answers.append(sock.recv(2048))
            except BlockingIOError:
                pass
            sock.close()
        assert len(listener.router) == limit  # no state beyond the limit
        assert listener.refused >= 30 and len(answers) >= 30
        # a refused dialer gets a clear error, quickly
        started = time.monotonic()
        with pytest.raises(HandshakeError, match="queue-full"):
            await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        assert time.monotonic() - started < 2
        # once a connection ends, a new one is admitted
        await held[0].close()
        await asyncio.sleep(0.1)
        extra = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        for conn in [*held[1:], extra]:
            await conn.close()


async def test_half_open_handshakes_time_out_and_free_their_slot() -> None:
    async with listening(max_connections=2, handshake_timeout=0.3) as listener:
        loop = asyncio.get_running_loop()
        quic = QuicConnection(
            configuration=client_configuration(listener.identity.cert_digest, KpsSettings())
        )
        quic.connect(("127.0.0.1", listener.port), loop.time())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for data, _ in quic.datagrams_to_send(loop.time()):
                sock.sendto(data, ("127.0.0.1", listener.port))
            await asyncio.sleep(0.1)
            assert len(listener.router) == 1  # the half-open handshake holds a slot...
            await asyncio.sleep(1.0)
            assert len(listener.router) == 0  # ...until the handshake timeout frees it


# -- fuzzing the sans-IO parts --------------------------------------------------------------------
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1600), st.floats(min_value=0, max_value=1e6))
def test_router_classifies_any_bytes_without_raising(data: bytes, now: float) -> None:
    router = QuicRouter(cid_length=8, max_connections=1)
    decision = router.classify(data, ("127.0.0.1", 9), now)
    assert decision.action in (Action.DROP, Action.ACCEPT, Action.REPLY)
    assert len(router) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_stun_detection_is_total(data: bytes) -> None:
    result = looks_like_stun(data)
    assert result == (len(data) >= 20 and data[0] < 64 and data[4:8] == b"\x21\x12\xa4\x42")


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(), st.integers(min_value=0, max_value=65535))
def test_v4_mapped_sources_are_normalised(ip: object, port: int) -> None:
    text = str(ip)
    mapped = ("::ffff:" + text) if ":" not in text else text
    v4 = getattr(ip, "ipv4_mapped", None)  # hypothesis may draw a v4-mapped IPv6 itself
    expected = str(v4) if v4 is not None else text
    host, got_port = normalize_address((mapped, port, 0, 0))
    assert got_port == port
    assert host == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=50), max_size=6))
def test_kps_sections_parse_or_fail_clearly(args: list[str]) -> None:
    section = Section("kps", tuple(args))
    for parse_target in (dial_target, listen_target):
        try:
            parse_target(section)
        except AddressError as exc:
            assert "expected" in str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "kps.idle_timeout",
                "kps.max_streams",
                "kps.nope",
                "kps.stream_window",
                "kps.keepalive",
                "other",
            ]
        ),
        st.one_of(
            st.integers(-5, 1 << 40),
            st.floats(allow_nan=True),
            st.text(max_size=8),
            st.booleans(),
            st.none(),
        ),
        max_size=4,
    )
)
def test_settings_accept_numbers_and_reject_the_rest_clearly(extra: dict[str, object]) -> None:
    try:
        KpsSettings.from_options(Options(extra=dict(extra)))
    except ValueError as exc:
        assert "kps." in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=1400), max_size=5))
def test_a_client_session_survives_any_datagrams(datagrams: list[bytes]) -> None:
    quic = GatedQuicConnection(configuration=client_configuration(os.urandom(32), KpsSettings()))
    session = KpsSession(quic, connection_window=1 << 20)
    session.connect(("127.0.0.1", 4433), 1.0)
    session.datagrams_to_send(1.0)
    for data in datagrams:
        session.receive_datagram(data, ("127.0.0.1", 4433), 1.1)
    session.datagrams_to_send(1.2)
    assert not session.handshake_done


def test_bad_kps_addresses_fail_at_dial_with_clear_errors() -> None:
    with pytest.raises(AddressError, match="port"):
        dial_target(Section("kps", ("127.0.0.1", "99999", "uEiA" + "A" * 43)))
    alt = parse("kps:127.0.0.1:4242:" + Identity.generate().certhash).alternatives[0]
    assert dial_target(alt.transport)[1] == 4242


async def test_a_malformed_certhash_fails_the_dial_clearly() -> None:
    with pytest.raises(HandshakeError, match="certhash"):
        await dial("127.0.0.1", 9, "uNOTAHASH", KpsSettings())
