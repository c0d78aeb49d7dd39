"""The synthesized SDP is KPS's text exactly, and aiortc's own parser reads it as intended."""

from __future__ import annotations

from aiortc.sdp import SessionDescription

from keywire.kps.webrtc import sdp

DIGEST = bytes(range(32))
FP = ":".join(f"{b:02X}" for b in range(32))


def test_server_answer_ipv4_exact() -> None:
    text = sdp.server_answer("127.0.0.1", 4242, "abcd", "PWD", DIGEST)
    assert text == (
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n"
        "m=application 4242 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 127.0.0.1\r\n"
        "a=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:PWD\r\n"
        f"a=fingerprint:sha-256 {FP}\r\na=setup:passive\r\na=sctp-port:5000\r\n"
        "a=max-message-size:1048576\r\na=candidate:1 1 UDP 1 127.0.0.1 4242 typ host\r\n"
    )


def test_server_answer_ipv6() -> None:
    text = sdp.server_answer("::1", 9, "abcd", "PWD", DIGEST)
    assert "o=- 0 0 IN IP6 ::\r\n" in text
    assert "c=IN IP6 ::1\r\n" in text
    assert "a=candidate:1 1 UDP 1 ::1 9 typ host\r\n" in text


def test_client_offer_shape() -> None:
    text = sdp.client_offer("abcd", "PWD")
    assert "a=ice-lite" not in text and "a=candidate" not in text
    assert "a=setup:active\r\n" in text and "c=IN IP4 0.0.0.0\r\n" in text
    assert f"a=fingerprint:sha-256 {sdp.PLACEHOLDER_FINGERPRINT}\r\n" in text
    assert sdp.PLACEHOLDER_FINGERPRINT.count(":") == 31
    assert "c=IN IP6 ::\r\n" in sdp.client_offer("abcd", "PWD", ipv6=True)


def test_aiortc_reads_the_answer() -> None:
    desc = SessionDescription.parse(sdp.server_answer("127.0.0.1", 4242, "abcd", "P" * 43, DIGEST))
    (media,) = desc.media
    assert media.kind == "application" and media.sctp_port == 5000
    assert media.ice is not None
    assert media.ice.usernameFragment == "abcd" and media.ice.iceLite
    assert media.dtls is not None and media.dtls.role == "server"
    assert media.dtls.fingerprints[0].value == FP
    assert (media.ice_candidates[0].ip, media.ice_candidates[0].port) == ("127.0.0.1", 4242)


def test_random_ufrag_is_hex() -> None:
    ufrag = sdp.random_ufrag()
    assert len(ufrag) == 18 and int(ufrag, 16) >= 0
    assert sdp.random_ufrag() != ufrag


def test_munge() -> None:
    offer = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\na=x\r\n"
    assert sdp.munge_credentials(offer, "new", "NEWPWD") == (
        "v=0\r\na=ice-ufrag:new\r\na=ice-pwd:NEWPWD\r\na=x\r\n"
    )
