"""qh3's transport-parameter encoder without a 64 KiB buffer per parameter (issue 17: connect).

qh3 2.1's ``push_quic_transport_parameters`` encodes each of the ~15 parameters it writes into
a fresh ``Buffer(capacity=65536)`` to learn its length, then copies it out: ~45–60 µs per
handshake on each side, on the critical path of both the ClientHello and the server's flight.
The function here writes the same parameters in the same order straight into the output
buffer, working out each length first (a varint's size, a byte string's length). ``install``
swaps the name qh3's TLS bridge calls. Same bytes and same errors as qh3's (the equality test
in tests/kps/test_transportparams.py runs both on the same inputs).
"""

from __future__ import annotations

from typing import Any

import qh3.quic.packet as _qh3_packet
import qh3.quic.tls_bridge as _qh3_tls_bridge
from qh3._hazmat import Buffer
from qh3.quic.packet import (
    PARAMS,
    QuicPreferredAddress,
    QuicTransportParameters,
    QuicVersionInformation,
)

#: qh3's original, kept for the equality test
ORIGINAL = _qh3_packet.push_quic_transport_parameters

_VERSION_INFORMATION = 0x11
#: PARAMS as a tuple of (id, attribute, kind), in qh3's order
_ORDER = tuple((param_id, name, kind) for param_id, (name, kind) in PARAMS.items())


def _varint_size(value: int) -> int:
    """Bytes RFC 9000 §16 needs for ``value``; qh3's own error for what it cannot encode."""
    if 0 <= value < 0x40:
        return 1
    if 0 <= value < 0x4000:
        return 2
    if 0 <= value < 0x40000000:
        return 4
    if 0 <= value < 0x4000000000000000:
        return 8
    Buffer(capacity=8).push_uint_var(value)  # raises as qh3 would
    raise ValueError(f"{value} cannot be a QUIC varint")  # pragma: no cover


def push_quic_transport_parameters(buf: Buffer, params: QuicTransportParameters) -> None:
    """qh3's encoder (same order, same GREASE placement) without the per-parameter buffer."""
    for param_id, name, kind in _ORDER:
        if param_id == _VERSION_INFORMATION and params.greased_transport_parameter is not None:
            grease_id, grease_value = params.greased_transport_parameter
            buf.push_uint_var(grease_id)
            buf.push_uint_var(len(grease_value))
            if grease_value:
                buf.push_bytes(grease_value)
        value: Any = getattr(params, name)
        if value is None or value is False:
            continue
        if kind is int:
            size = _varint_size(value)
            buf.push_uint_var(param_id)
            buf.push_uint_var(size)
            buf.push_uint_var(value)
        elif kind is bytes:
            buf.push_uint_var(param_id)
            buf.push_uint_var(len(value))
            buf.push_bytes(value)
        elif kind is QuicVersionInformation:
            versions = value.available_versions
            buf.push_uint_var(param_id)
            buf.push_uint_var(4 + 4 * len(versions))
            buf.push_uint32(value.chosen_version)
            for version in versions:
                buf.push_uint32(version)
        elif kind is QuicPreferredAddress:  # never set by qh3 or keywire: qh3's own code
            scratch = Buffer(capacity=65536)
            _qh3_packet.push_quic_preferred_address(scratch, value)
            buf.push_uint_var(param_id)
            buf.push_uint_var(scratch.tell())
            buf.push_bytes(scratch.data)
        else:  # a flag (disable_active_migration): present, empty
            buf.push_uint_var(param_id)
            buf.push_uint_var(0)


def install() -> None:
    """Make qh3's TLS bridge encode with the function above (idempotent)."""
    _qh3_tls_bridge.push_quic_transport_parameters = push_quic_transport_parameters  # type: ignore[attr-defined]
