"""qh3's transport-parameter encoder without per-parameter buffers
(``keywire.kps.quic.transportparams``) writes exactly what qh3's own does: the parameters real
KPS dialers and listeners send, every parameter kind qh3 knows, and the same errors."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import qh3.quic.tls_bridge as tls_bridge
from qh3._hazmat import Buffer
from qh3.quic.packet import (
    QuicPreferredAddress,
    QuicTransportParameters,
    QuicVersionInformation,
    pull_quic_transport_parameters,
)

from keywire.identity import Identity
from keywire.kps import KpsSettings
from keywire.kps.quic import client_configuration, server_configuration, transportparams

FAST = transportparams.push_quic_transport_parameters
ORIGINAL = transportparams.ORIGINAL


def encode(func: Any, params: QuicTransportParameters, capacity: int = 4096) -> bytes:
    buf = Buffer(capacity=capacity)
    func(buf, params)
    return bytes(buf.data)


def outcome(func: Any, params: QuicTransportParameters, capacity: int = 4096) -> object:
    """The bytes written, or the type and text of the error raised."""
    try:
        return encode(func, params, capacity)
    except Exception as exc:
        return (type(exc), str(exc))


def test_installed() -> None:
    # the TLS bridge calls the name it imported; keywire.kps's import replaces it there
    assert tls_bridge.push_quic_transport_parameters is FAST  # type: ignore[attr-defined]


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_kps_handshake_advertises_the_same_bytes(side: str) -> None:
    settings = KpsSettings()
    identity = Identity.generate()
    config = (
        client_configuration(identity.cert_digest, settings)
        if side == "client"
        else server_configuration(identity, settings)
    )
    bridge = tls_bridge.QuicTlsBridge(
        config,
        version=1,
        local_initial_source_connection_id=os.urandom(8),
        original_destination_connection_id=os.urandom(8),
        retry_source_connection_id=os.urandom(8) if side == "server" else None,
    )
    fast = bridge.serialize_transport_parameters()
    tls_bridge.push_quic_transport_parameters = ORIGINAL  # type: ignore[attr-defined]
    try:
        assert bridge.serialize_transport_parameters() == fast
    finally:
        tls_bridge.push_quic_transport_parameters = FAST  # type: ignore[attr-defined]
    parsed = pull_quic_transport_parameters(Buffer(data=fast))
    assert parsed.initial_max_data == settings.connection_window
    assert parsed.initial_source_connection_id == bridge.local_initial_source_connection_id


def _every_kind() -> QuicTransportParameters:
    return QuicTransportParameters(
        original_destination_connection_id=b"\x01" * 20,
        max_idle_timeout=0x3FFFFFFF + 1,  # an 8-byte varint
        stateless_reset_token=b"\x02" * 16,
        max_udp_payload_size=1472,
        initial_max_data=0x3F,
        initial_max_stream_data_bidi_local=0x40,
        initial_max_stream_data_bidi_remote=0x3FFF,
        initial_max_stream_data_uni=0x4000,
        initial_max_streams_bidi=0,
        initial_max_streams_uni=103,
        ack_delay_exponent=3,
        max_ack_delay=25,
        disable_active_migration=True,
        preferred_address=QuicPreferredAddress(
            ipv4_address=("192.0.2.1", 4433),
            ipv6_address=("2001:db8::1", 4433),
            connection_id=b"\x03" * 8,
            stateless_reset_token=b"\x04" * 16,
        ),
        active_connection_id_limit=2,
        initial_source_connection_id=b"",
        retry_source_connection_id=b"\x05" * 8,
        version_information=QuicVersionInformation(
            chosen_version=1, available_versions=[1, 0x6B3343CF, 0x1A2A3A4A]
        ),
        max_datagram_frame_size=65536,
        quantum_readiness=b"Q" * 1200,
        google_connection_options=b"ORIG",
        initial_rtt=333000,
        greased_transport_parameter=(31 * 12345 + 27, b"grease"),
    )


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"greased_transport_parameter": (31 * 7 + 27, b"")},
        {"greased_transport_parameter": None},
        {"version_information": None},  # the GREASE parameter still goes where it would be
        {"disable_active_migration": False, "preferred_address": None},
        {"max_idle_timeout": 0x3FFFFFFFFFFFFFFF},  # the largest varint
    ],
)
def test_every_parameter_kind_is_written_as_qh3_writes_it(change: dict[str, Any]) -> None:
    params = dataclasses.replace(_every_kind(), **change)
    assert encode(FAST, params) == encode(ORIGINAL, params)
    assert encode(FAST, QuicTransportParameters()) == encode(ORIGINAL, QuicTransportParameters())


@pytest.mark.parametrize(
    "change, capacity",
    [
        ({"max_idle_timeout": 0x4000000000000000}, 4096),  # beyond a varint
        ({"initial_max_data": -1}, 4096),
        ({"version_information": QuicVersionInformation(1, [2**32])}, 4096),
        ({}, 64),  # the output buffer is too small
    ],
)
def test_the_same_errors_as_qh3(change: dict[str, Any], capacity: int) -> None:
    params = dataclasses.replace(_every_kind(), **change)
    fast, original = outcome(FAST, params, capacity), outcome(ORIGINAL, params, capacity)
    assert isinstance(original, tuple), "the case must fail"
    assert fast == original
