"""Which IP a server counts a pipe against (per-IP shares): from the peer text every
transport gives its pipes."""

from __future__ import annotations

import pytest

from keywire.address import parse_alternative
from keywire.admission import source_ip


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("net:203.0.113.5:41234", "203.0.113.5"),
        ("net:::1:41234", "::1"),
        ("ws://203.0.113.5:41234", "203.0.113.5"),
        ("ws://[2001:db8::7]:41234", "2001:db8::7"),
        ("wss://[::1]:8443", "::1"),
        ("unix:/run/keywire.sock", None),
        ("onion:", None),
        ("", None),
    ],
)
def test_source_ip(peer: str, ip: str | None) -> None:
    assert source_ip(peer) == ip
    if peer:  # every peer text is itself an address (Connection.address parses it)
        assert str(parse_alternative(peer)) == peer
