"""STUN on the relay (`keywire relay --stun-port`) and the client that asks it from a KPS socket."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keywire.identity import Identity
from keywire.kps import KpsListener, KpsSettings, dial
from keywire.kps.webrtc.ice import StunError, looks_like_stun, parse_stun
from keywire.nat.stun import (
    ATTR_CHANGE_REQUEST,
    StunServerCore,
    binding_request,
    binding_response,
    decode_address,
    encode_address,
    parse_binding_response,
)
from keywire.nat.stunio import open_stun_endpoint, parse_host_port, query_demux, stun_on_demux

from ..kps.helpers import echo_handler
from .lab import KEYWIRE, RELAY_IP, RELAY_IP2, Lab

# -- the codec (sans-IO) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr", [("198.51.100.7", 1), ("10.0.0.2", 65535), ("2001:db8::1", 3478), ("::1", 40000)]
)
def test_addresses_round_trip_plain_and_xored(addr: tuple[str, int]) -> None:
    txid = os.urandom(12)
    assert decode_address(encode_address(addr)) == addr
    xored = encode_address(addr, txid)
    assert xored != encode_address(addr)
    assert decode_address(xored, txid) == addr


def test_a_request_is_answered_with_the_source_as_the_mapped_address() -> None:
    core = StunServerCore([("198.51.100.1", 3478), ("198.51.100.1", 3479)])
    request = binding_request()
    assert looks_like_stun(request) and parse_stun(request).transaction_id == request[8:20]
    answer = core.datagram(request, ("203.0.113.9", 50000), 0, now=0.0)
    assert answer is not None and answer.via == 0 and answer.to == ("203.0.113.9", 50000)
    result = parse_binding_response(answer.data)
    assert result.transaction_id == request[8:20]
    assert result.mapped == ("203.0.113.9", 50000)
    assert result.origin == ("198.51.100.1", 3478)
    assert result.other == ("198.51.100.1", 3479)


def test_change_port_is_answered_from_the_other_socket() -> None:
    core = StunServerCore([("198.51.100.1", 3478), ("198.51.100.1", 3479)])
    answer = core.datagram(binding_request(change_port=True), ("203.0.113.9", 5), 1, now=0.0)
    assert answer is not None and answer.via == 0
    assert parse_binding_response(answer.data).origin == ("198.51.100.1", 3478)
    one_port = StunServerCore([("198.51.100.1", 3478)])
    answer = one_port.datagram(binding_request(change_port=True), ("203.0.113.9", 5), 0, 0.0)
    assert answer is not None and answer.via == 0
    assert parse_binding_response(answer.data).other is None


def test_what_is_not_a_binding_request_gets_no_answer() -> None:
    core = StunServerCore([("0.0.0.0", 3478)])
    request = binding_request()
    response = binding_response(request[8:20], ("1.2.3.4", 5))
    corrupt_fingerprint = request[:-1] + bytes([request[-1] ^ 1])
    bad_length = request[:2] + struct.pack("!H", 400) + request[4:]
    for junk in (b"", b"\x00" * 19, os.urandom(64), response, corrupt_fingerprint, bad_length):
        assert core.datagram(junk, ("1.2.3.4", 5), 0, 0.0) is None
    assert core.counters.get("answered", 0) == 0
    # a wildcard bind names no origin and no other address
    answer = core.datagram(request, ("1.2.3.4", 5), 0, 0.0)
    assert answer is not None
    result = parse_binding_response(answer.data)
    assert result.origin is None and result.other is None


def test_answers_are_rate_limited_per_source() -> None:
    core = StunServerCore([("198.51.100.1", 3478)], rate=10.0)
    answered = sum(
        core.datagram(binding_request(), ("1.2.3.4", 5), 0, 0.0) is not None for _ in range(100)
    )
    assert answered == 20  # the burst
    assert core.datagram(binding_request(), ("1.2.3.5", 5), 0, 0.0) is not None  # others not
    assert core.datagram(binding_request(), ("1.2.3.4", 5), 0, 1.0) is not None  # refilled


def test_malformed_responses_raise_stun_error() -> None:
    request = binding_request()
    with pytest.raises(StunError, match="not a Binding success"):
        parse_binding_response(request)
    with pytest.raises(StunError):
        parse_binding_response(b"\x01\x01" + os.urandom(30))
    with pytest.raises(StunError, match="bad family"):
        decode_address(b"\x00\x07\x00\x01" + bytes(4))
    with pytest.raises(ValueError, match="12 bytes"):
        binding_request(b"short")
    assert ATTR_CHANGE_REQUEST == 3


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_server(data: bytes) -> None:
    core = StunServerCore([("198.51.100.1", 3478)])
    answer = core.datagram(data, ("1.2.3.4", 5), 0, 0.0)
    assert answer is None or parse_binding_response(answer.data).mapped == ("1.2.3.4", 5)


def test_server_specs_parse_and_bad_ones_say_why() -> None:
    assert parse_host_port("relay.example") == ("relay.example", 3478)
    assert parse_host_port("198.51.100.1:3479") == ("198.51.100.1", 3479)
    assert parse_host_port("[2001:db8::1]:9") == ("2001:db8::1", 9)
    assert parse_host_port("2001:db8::1") == ("2001:db8::1", 3478)
    for bad in ("host:0", "host:x", ":3478", "[::1", "[::1]x"):
        with pytest.raises(ValueError, match="bad STUN server"):
            parse_host_port(bad)


# -- the relay's STUN port, and a KPS listener asking from its own socket -------------------------


async def test_relay_stun_ports_and_the_kps_socket_learn_the_mapping(
    relay_stun: tuple[int, int],
) -> None:
    first, second = relay_stun
    async with asyncio.timeout(20):
        endpoint = await open_stun_endpoint("127.0.0.1")
        try:
            result, source = await endpoint.client.binding(("127.0.0.1", first), timeout=3)
            assert result.mapped == endpoint.local
            assert source == ("127.0.0.1", first)
            changed, source = await endpoint.client.binding(
                ("127.0.0.1", first), change_port=True, timeout=3
            )
            assert source == ("127.0.0.1", second)  # answered from the other port
            assert changed.mapped == endpoint.local and changed.origin == source
        finally:
            endpoint.close()

        listener = KpsListener(Identity.generate(), KpsSettings(), echo_handler)
        await listener.start("127.0.0.1", 0)
        try:
            assert listener.demux is not None
            hook_before = listener.demux.webrtc
            mapped = await query_demux(listener.demux, ("127.0.0.1", second))
            assert mapped.mapped == ("127.0.0.1", listener.port)
            assert listener.demux.webrtc is hook_before  # the WebRTC hook is given back
            # the socket still serves KPS: the STUN answer did not reach QUIC, QUIC still works
            conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
            stream = await conn.open_stream()
            await stream.write(b"after stun")
            await stream.close_write()
            assert await stream.read_all() == b"after stun"
            await conn.close()
        finally:
            await listener.close(abort_connections=True)


async def test_no_answer_is_a_timeout_not_a_hang() -> None:
    async with asyncio.timeout(10):
        endpoint = await open_stun_endpoint("127.0.0.1")
        silent = await open_stun_endpoint("127.0.0.1")  # a UDP port that never answers
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await endpoint.client.binding(silent.local, timeout=1.0)
            assert loop.time() - started < 2.0
        finally:
            endpoint.close()
            silent.close()


async def test_an_answer_to_someone_elses_transaction_is_ignored() -> None:
    async with asyncio.timeout(10):
        endpoint = await open_stun_endpoint("127.0.0.1")
        try:
            forged = binding_response(os.urandom(12), ("6.6.6.6", 6))
            assert endpoint.client.feed(forged, ("127.0.0.1", 1)) is False
        finally:
            endpoint.close()


async def test_the_webrtc_hook_is_given_back_when_a_query_times_out() -> None:
    async with asyncio.timeout(10):
        listener = KpsListener(Identity.generate(), KpsSettings(), echo_handler)
        await listener.start("127.0.0.1", 0)
        silent = await open_stun_endpoint("127.0.0.1")  # a UDP port that never answers
        try:
            assert listener.demux is not None
            before = listener.demux.webrtc
            with stun_on_demux(listener.demux) as client:
                assert listener.demux.webrtc is not before  # our hook is in front meanwhile
                with pytest.raises(TimeoutError):
                    await client.binding(silent.local, timeout=0.3)
            assert listener.demux.webrtc is before
        finally:
            silent.close()
            await listener.close(abort_connections=True)


# -- in the NAT lab: the mapping learned is the mapping used -----------------------------------


def test_a_listener_behind_full_cone_nat_is_dialled_at_the_address_stun_gave(lab: Lab) -> None:
    lab.relay(host="0.0.0.0")  # STUN on both of the relay's addresses
    peer = lab.add_peer("a", "full-cone")
    inside, internet = lab.ns_loop(peer.ns), lab.ns_loop(lab.inet)

    async def listen() -> tuple[KpsListener, tuple[str, int]]:
        listener = KpsListener(Identity.generate(), KpsSettings(), echo_handler)
        await listener.start("0.0.0.0", 0)
        assert listener.demux is not None
        result = await query_demux(listener.demux, (RELAY_IP, 3478))
        return listener, result.mapped

    async def dial_and_echo(mapped: tuple[str, int], certhash: str) -> bytes:
        conn = await dial(mapped[0], mapped[1], certhash, KpsSettings())
        stream = await conn.open_stream()
        await stream.write(b"x" * 100_000)
        await stream.close_write()
        data = await stream.read_all()
        await conn.close()
        return data

    listener, mapped = inside.run(listen())
    assert mapped[0] == peer.public_ip
    assert inside.run(query_demux(listener.demux, (RELAY_IP2, 3479))).mapped == mapped  # type: ignore[arg-type]
    assert internet.run(dial_and_echo(mapped, listener.identity.certhash)) == b"x" * 100_000
    inside.run(listener.close(abort_connections=True))


def test_a_stun_port_in_use_stops_the_relay_with_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run(
            [KEYWIRE, "relay", "--host", "127.0.0.1", "--port", "0", "--stun-port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 2
    assert "cannot serve STUN" in done.stderr and done.stdout == ""
    for bad in (["--stun-port", "x"], ["--stun-port", "1", "--stun-port", "2", "--stun-port", "3"]):
        done = subprocess.run(
            [KEYWIRE, "relay", "--host", "127.0.0.1", "--port", "0", *bad],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2, done.stderr
