"""SDP for KPS WebRTC-direct, synthesized on both sides so nothing is signalled (KPS §2.5).

The dialer invents the server's answer from the address alone (IP, port, certhash) and a random
hex ufrag whose password both sides derive from the certhash. The server, on the first verified
STUN check for a ufrag, fabricates the dialer's offer the same way (a placeholder fingerprint: a
KPS server does not authenticate the client). The text matches KPS byte for byte, so KPS's own
browser client and servers interoperate.
"""

from __future__ import annotations

import ipaddress
import secrets

from ...identity import fingerprint_hex

#: the placeholder fingerprint KPS servers put in the fabricated offer
PLACEHOLDER_FINGERPRINT = ":".join(
    ["AA", "BB", "CC", "DD", "EE", "FF", "00", "11", "22", "33", "44", "55", "66", "77", "88", "99"]
    * 2
)
SCTP_PORT = 5000
MAX_MESSAGE_SIZE = 1048576


def random_ufrag(nbytes: int = 9) -> str:
    """A fresh ufrag: hex only (ice-chars that every stack accepts), 72 bits by default."""
    if nbytes < 8:
        raise ValueError("a KPS ufrag carries at least 64 random bits")
    return secrets.token_hex(nbytes)


def _family(ip: str) -> tuple[str, str]:
    """(``IP4``/``IP6``, the wildcard of that family) for an IP literal."""
    version = ipaddress.ip_address(ip).version
    return ("IP6", "::") if version == 6 else ("IP4", "0.0.0.0")


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def server_answer(ip: str, port: int, ufrag: str, password: str, digest: bytes) -> str:
    """The answer a dialer sets as the server's description (ICE-lite, DTLS passive)."""
    fam, wildcard = _family(ip)
    return _join(
        [
            "v=0",
            f"o=- 0 0 IN {fam} {wildcard}",
            "s=-",
            "t=0 0",
            "a=ice-lite",
            f"m=application {port} UDP/DTLS/SCTP webrtc-datachannel",
            f"c=IN {fam} {ip}",
            "a=mid:0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{password}",
            f"a=fingerprint:sha-256 {fingerprint_hex(digest)}",
            "a=setup:passive",
            f"a=sctp-port:{SCTP_PORT}",
            f"a=max-message-size:{MAX_MESSAGE_SIZE}",
            f"a=candidate:1 1 UDP 1 {ip} {port} typ host",
        ]
    )


def client_offer(ufrag: str, password: str, *, ipv6: bool = False, port: int = 9) -> str:
    """The offer a server fabricates for a dialer it has only seen a STUN check from."""
    fam, wildcard = ("IP6", "::") if ipv6 else ("IP4", "0.0.0.0")
    return _join(
        [
            "v=0",
            f"o=- 0 0 IN {fam} {wildcard}",
            "s=-",
            "t=0 0",
            f"m=application {port} UDP/DTLS/SCTP webrtc-datachannel",
            f"c=IN {fam} {wildcard}",
            "a=mid:0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{password}",
            f"a=fingerprint:sha-256 {PLACEHOLDER_FINGERPRINT}",
            "a=setup:active",
            f"a=sctp-port:{SCTP_PORT}",
            f"a=max-message-size:{MAX_MESSAGE_SIZE}",
        ]
    )


def munge_credentials(sdp: str, ufrag: str, password: str) -> str:
    """Replace every ``a=ice-ufrag``/``a=ice-pwd`` line (what a browser dialer does)."""
    out: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            line = f"a=ice-ufrag:{ufrag}"
        elif line.startswith("a=ice-pwd:"):
            line = f"a=ice-pwd:{password}"
        out.append(line)
    return _join(out)
