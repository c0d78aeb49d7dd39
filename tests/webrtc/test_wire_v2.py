"""keywire wire v2 (ICE credentials without SDP munging): test vectors, the gate, real dials.

The vectors are the ones in docs/webrtc.md ("Wire v2"); the browser module checks the same
values in tests/webrtc/test_browser.py::test_module_vectors_and_address_checks.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from aioice import stun as aio_stun

from keywire.kps.webrtc import ice
from keywire.kps.webrtc.dialer import WebRTCDialError, dial_webrtc
from keywire.kps.webrtc.settings import WebRTCSettings
from keywire.options import Options

from .wrtc_helpers import Served

pytestmark = pytest.mark.timeout(60)

# -- the vector's fixed inputs ---------------------------------------------------------------
DIGEST = bytes(range(32))
CLIENT_UFRAG = "Tq3v"  # Chromium-shaped: 4 ice-chars
CLIENT_PASSWORD = "abcdefghijklmnopqrstuvwx"  # Chromium-shaped: 24 ice-chars
NONCE = bytes(range(12))
TXID = b"keywire-v2tx"
TIE_BREAKER = 0x0102030405060708
PRIORITY = 1853824767
# -- and the exact outputs -------------------------------------------------------------------
KEY_HEX = "3e4ead041cd6908b61170eaa37e40a60fa1879a183b93d5eba1ef283612571d9"
SERVER_UFRAG = "AAECAwQFBgcICQoLySrM67N5MeQw/DDsdIj1uMOyYay+/YaO+dOoI1oerGHP4USuh7yG8A"
SERVER_PASSWORD = "Y93BjcHuyNQWus/jbpVZlrRRcJxWa8CIJn+hpy1QsVM"
CHECK_HEX = (
    "000100842112a4426b6579776972652d763274780006004b41414543417751464267634943516f4c795372"
    "4d36374e354d6551772f44447364496a31754d4f795961792b2f59614f2b644f6f49316f6572474850345553"
    "756837794738413a5471337600002400046e7f1eff802a00080102030405060708000800143be5dfb5c1c01f"
    "e861599fa31bd4bd72b0a7e08e802800044d4bfaa5"
)


def check(username: str, password: str, *, txid: bytes = TXID) -> bytes:
    """A browser-shaped binding request, encoded by aioice (an independent STUN encoder)."""
    msg = aio_stun.Message(
        message_method=aio_stun.Method.BINDING,
        message_class=aio_stun.Class.REQUEST,
        transaction_id=txid,
    )
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = PRIORITY
    msg.attributes["ICE-CONTROLLING"] = TIE_BREAKER
    msg.add_message_integrity(password.encode())
    msg.add_fingerprint()
    return bytes(msg)


def test_vector_key_ufrag_password() -> None:
    assert ice.v2_key(DIGEST).hex() == KEY_HEX
    assert ice.seal_server_ufrag(DIGEST, CLIENT_UFRAG, CLIENT_PASSWORD, NONCE) == SERVER_UFRAG
    assert ice.derive_ice_password_v2(DIGEST, SERVER_UFRAG) == SERVER_PASSWORD
    raw = base64.b64decode(SERVER_UFRAG + "==")
    # layout: nonce (12) || ciphertext (len(password)) || GCM tag (16)
    assert raw[:12] == NONCE and len(raw) == 12 + len(CLIENT_PASSWORD) + 16
    assert len(SERVER_UFRAG) == 70


def test_vector_stun_check_bytes_and_admission() -> None:
    data = check(f"{SERVER_UFRAG}:{CLIENT_UFRAG}", SERVER_PASSWORD)
    assert data.hex() == CHECK_HEX
    verdict = ice.StunGate(DIGEST).admit(bytes.fromhex(CHECK_HEX), "127.0.0.1", 0.0, peers=0)
    assert verdict.ufrag == SERVER_UFRAG and verdict.version == 2
    assert verdict.password == SERVER_PASSWORD
    assert (verdict.remote_ufrag, verdict.remote_password) == (CLIENT_UFRAG, CLIENT_PASSWORD)


def test_v1_and_v2_told_apart_by_username() -> None:
    gate = ice.StunGate(DIGEST)
    v1 = "00ff00ff00ff00ff00"
    v1_pwd = ice.derive_ice_password(DIGEST, v1)
    verdict = gate.admit(check(f"{v1}:{v1}", v1_pwd), "127.0.0.1", 0.0, peers=0)
    assert (verdict.ufrag, verdict.version, verdict.remote_password) == (v1, 1, v1_pwd)
    verdict = gate.admit(bytes.fromhex(CHECK_HEX), "127.0.0.1", 0.0, peers=0)
    assert verdict.version == 2
    # a v1-derived password on a v2 username, and the reverse, are both refused
    assert (
        gate.admit(
            check(f"{SERVER_UFRAG}:{CLIENT_UFRAG}", ice.derive_ice_password(DIGEST, SERVER_UFRAG)),
            "127.0.0.1",
            0.0,
            peers=0,
        ).reason
        == "integrity"
    )
    assert (
        gate.admit(
            check(f"{v1}:{v1}", ice.derive_ice_password_v2(DIGEST, v1)), "127.0.0.1", 0.0, peers=0
        ).reason
        == "integrity"
    )
    assert gate.counters == {"admitted": 2, "admitted-v1": 1, "admitted-v2": 1, "integrity": 2}


@pytest.mark.parametrize(
    "case",
    [
        "other-certhash",
        "other-client-ufrag",
        "flipped-byte",
        "non-canonical",
        "truncated",
        "plain-libp2p",
    ],
)
def test_v2_box_rejections(case: str) -> None:
    """Every way a v2 server ufrag can be wrong ends at the box, before the MAC or anything."""
    ufrag, client = SERVER_UFRAG, CLIENT_UFRAG
    if case == "other-certhash":
        ufrag = ice.seal_server_ufrag(bytes(32), CLIENT_UFRAG, CLIENT_PASSWORD, NONCE)
    elif case == "other-client-ufrag":
        client = "Tq3w"  # the box is bound to the client's ufrag (AAD)
    elif case == "flipped-byte":
        raw = bytearray(base64.b64decode(SERVER_UFRAG + "=="))
        raw[20] ^= 1
        ufrag = base64.b64encode(bytes(raw)).decode().rstrip("=")
    elif case == "non-canonical":
        ufrag = SERVER_UFRAG[:-1] + "B"  # same bytes, nonzero padding bits
    elif case == "truncated":
        ufrag = SERVER_UFRAG[:40]
    elif case == "plain-libp2p":
        ufrag = "libp2p+webrtc+v2/" + CLIENT_PASSWORD
    data = check(f"{ufrag}:{client}", ice.derive_ice_password_v2(DIGEST, ufrag))
    verdict = ice.StunGate(DIGEST).admit(data, "127.0.0.1", 0.0, peers=0)
    assert (verdict.ufrag, verdict.reason) == (None, "v2-ufrag")


def test_seal_refuses_bad_credentials() -> None:
    with pytest.raises(ValueError):
        ice.seal_server_ufrag(DIGEST, "ab", CLIENT_PASSWORD)
    with pytest.raises(ValueError):
        ice.seal_server_ufrag(DIGEST, CLIENT_UFRAG, "short")
    with pytest.raises(ValueError):
        ice.seal_server_ufrag(DIGEST, CLIENT_UFRAG, CLIENT_PASSWORD, b"\x00" * 8)


def test_fresh_nonce_each_seal() -> None:
    a = ice.seal_server_ufrag(DIGEST, CLIENT_UFRAG, CLIENT_PASSWORD)
    b = ice.seal_server_ufrag(DIGEST, CLIENT_UFRAG, CLIENT_PASSWORD)
    assert a != b


def test_wire_setting_checked() -> None:
    assert WebRTCSettings().wire_version == 1
    options = Options(extra={"webrtc.wire_version": "2"})
    assert WebRTCSettings.from_options(options).wire_version == 2
    with pytest.raises(ValueError, match=r"webrtc\.wire_version"):
        WebRTCSettings(wire_version=3)


async def _echo(conn_client: object, served: Served) -> None:
    from keywire.kps.webrtc.connection import WebRTCConnection

    assert isinstance(conn_client, WebRTCConnection)
    server = await served.next_connection()
    stream = await conn_client.open_stream()
    await stream.write(b"ping")
    await stream.close_write()
    peer = await server.accept_stream()
    assert await peer.read_all() == b"ping"
    await peer.write(b"pong")
    await peer.close_write()
    assert await stream.read_all() == b"pong"


async def test_python_dialer_v1_and_v2_on_one_listener(served: Served) -> None:
    v2 = Options(extra={"webrtc.wire_version": 2})
    async with asyncio.timeout(30):
        first = await dial_webrtc("127.0.0.1", served.port, served.certhash, v2)
        await _echo(first, served)
        second = await dial_webrtc("127.0.0.1", served.port, served.certhash)
        await _echo(second, served)
        await first.close()
        await second.close()
    counters = served.listener.gate.counters
    assert counters.get("admitted-v1", 0) >= 1 and counters.get("admitted-v2", 0) >= 1


async def test_python_dialer_v2_wrong_certhash_gets_no_answer(served: Served) -> None:
    from keywire.identity import Identity

    other = Identity.generate().certhash
    options = Options(timeout=2.0, extra={"webrtc.wire_version": 2})
    with pytest.raises(WebRTCDialError, match="ICE"):
        await dial_webrtc("127.0.0.1", served.port, other, options)
    assert served.listener.gate.counters.get("v2-ufrag", 0) >= 1
    assert not served.listener.peers
