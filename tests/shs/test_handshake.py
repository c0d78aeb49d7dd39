"""The sans-IO shs1 machines: success, invites, and every way a handshake is refused."""

from __future__ import annotations

import hashlib
import os

import pytest

from keywire.shs.handshake import SessionKeys, ShsClient, ShsHandshakeError, ShsServer
from keywire.shs.steps import auth_tag, keypair_from_seed

APP = hashlib.sha256(b"app_key").digest()
ALICE = hashlib.sha256(b"alice").digest()
BOB = hashlib.sha256(b"bob").digest()
BOB_PK = keypair_from_seed(BOB)[0]
ALICE_PK = keypair_from_seed(ALICE)[0]


def pair(
    client_seed: bytes = ALICE,
    server_key: bytes = BOB_PK,
    client_app: bytes = APP,
    server_app: bytes = APP,
) -> tuple[ShsClient, ShsServer]:
    return (ShsClient(client_app, client_seed, server_key), ShsServer(server_app, BOB))


def run(client: ShsClient, server: ShsServer) -> tuple[bytes, bytes, bytes, bytes]:
    msg1 = client.initiate()
    msg2 = server.receive_data(msg1)
    msg3 = client.receive_data(msg2)
    assert server.receive_data(msg3) == b""
    assert server.awaiting_authorization
    msg4 = server.authorize(True)
    assert client.receive_data(msg4) == b""
    return msg1, msg2, msg3, msg4


def test_success_lengths_and_keys() -> None:
    client, server = pair()
    msgs = run(client, server)
    assert [len(m) for m in msgs] == [64, 64, 112, 80]
    assert client.done and server.done
    c, s = client.keys, server.keys
    assert (c.encrypt_key, c.encrypt_nonce) == (s.decrypt_key, s.decrypt_nonce)
    assert (c.decrypt_key, c.decrypt_nonce) == (s.encrypt_key, s.encrypt_nonce)
    assert c.remote_public_key == BOB_PK and s.remote_public_key == ALICE_PK
    assert server.client_public_key == ALICE_PK
    # client→server nonce is the server's challenge MAC, server→client the client's
    assert c.encrypt_nonce == msgs[1][:24] and c.decrypt_nonce == msgs[0][:24]
    assert len(c.as_bytes()) == 112


def test_deterministic_with_fixed_ephemerals() -> None:
    def once() -> SessionKeys:
        client = ShsClient(APP, ALICE, BOB_PK, ephemeral_random=bytes(32))
        server = ShsServer(APP, BOB, ephemeral_random=b"\x01" * 32)
        run(client, server)
        return client.keys

    assert once() == once()


def test_byte_at_a_time() -> None:
    client, server = pair()
    msg1 = client.initiate()
    msg2 = b"".join(server.receive_data(msg1[i : i + 1]) for i in range(64))
    assert len(msg2) == 64
    msg3 = b"".join(client.receive_data(msg2[i : i + 1]) for i in range(64))
    for i in range(112):
        assert server.bytes_needed == 112 - i
        server.receive_data(msg3[i : i + 1])
    msg4 = server.authorize(True)
    for i in range(80):
        client.receive_data(msg4[i : i + 1])
    assert client.done and client.bytes_needed == 0


def test_invite_seed_replaces_the_client_identity() -> None:
    invite = os.urandom(32)
    client, server = pair(client_seed=invite)
    run(client, server)
    assert server.keys.remote_public_key == keypair_from_seed(invite)[0]


def test_box_stream_bytes_after_msg4_are_left_over() -> None:
    client, server = pair()
    msg1 = client.initiate()
    msg3 = client.receive_data(server.receive_data(msg1))
    server.receive_data(msg3)
    msg4 = server.authorize(True)
    assert client.receive_data(msg4 + b"early frame") == b""
    assert client.take_leftover() == b"early frame"
    assert client.take_leftover() == b""


def test_wrong_app_key() -> None:
    client, server = pair(client_app=os.urandom(32))
    with pytest.raises(ShsHandshakeError, match="phase 1") as info:
        server.receive_data(client.initiate())
    assert "application cap" in str(info.value) and info.value.side == "server"
    # the server hangs up; the client names the likely cause
    with pytest.raises(ShsHandshakeError, match=r"hung up after our challenge \(phase 1\)") as c:
        client.receive_eof()
    assert "app key" in str(c.value) and c.value.phase == 1


def test_wrong_server_key() -> None:
    wally = keypair_from_seed(hashlib.sha256(b"wally").digest())[0]
    client, server = pair(server_key=wally)
    msg3 = client.receive_data(server.receive_data(client.initiate()))
    with pytest.raises(ShsHandshakeError, match="wrong number") as info:
        server.receive_data(msg3)
    assert info.value.phase == 3
    with pytest.raises(ShsHandshakeError, match=r"phase 3.*wrong server key"):
        client.receive_eof()


def test_unauthorized_client_gets_nothing() -> None:
    client, server = pair()
    server.receive_data(client.receive_data(server.receive_data(client.initiate())))
    with pytest.raises(ShsHandshakeError, match="not authorized") as info:
        server.authorize(False)
    assert f"@{__import__('base64').b64encode(ALICE_PK).decode()}.ed25519" in str(info.value)
    assert server.failed
    with pytest.raises(ShsHandshakeError):
        server.receive_data(b"more")
    with pytest.raises(ShsHandshakeError, match="does not authorize us"):
        client.receive_eof()


@pytest.mark.parametrize("index", [0, 1, 2, 3])
@pytest.mark.parametrize("bit", [0, 7, 300])
def test_bit_flip_in_each_message(index: int, bit: int) -> None:
    client, server = pair()
    msgs = [client.initiate()]
    expected_phase = [1, 2, 3, 4][index]

    def flip(message: bytes) -> bytes:
        out = bytearray(message)
        out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
        return bytes(out)

    steps = [
        lambda m: server.receive_data(m),
        lambda m: client.receive_data(m),
        lambda m: server.receive_data(m),
        lambda m: client.receive_data(m),
    ]
    for i in range(4):
        message = msgs[i]
        if i == index:
            with pytest.raises(ShsHandshakeError) as info:
                steps[i](flip(message))
            assert info.value.phase == expected_phase
            return
        out = steps[i](message)
        if i == 2:
            out = server.authorize(True)
        msgs.append(out)
    raise AssertionError("no message was flipped")


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_truncated_message_then_hangup(step: int) -> None:
    client, server = pair()
    msg1 = client.initiate()
    if step == 0:
        server.receive_data(msg1[:40])
        with pytest.raises(ShsHandshakeError, match=r"before its challenge.*40 of its 64"):
            server.receive_eof()
        return
    msg2 = server.receive_data(msg1)
    if step == 1:
        client.receive_data(msg2[:63])
        with pytest.raises(ShsHandshakeError, match=r"phase 1.*63 of its 64"):
            client.receive_eof()
        return
    msg3 = client.receive_data(msg2)
    if step == 2:
        server.receive_data(msg3[:100])
        with pytest.raises(ShsHandshakeError, match=r"before its hello.*100 of its 112"):
            server.receive_eof()
        return
    server.receive_data(msg3)
    msg4 = server.authorize(True)
    client.receive_data(msg4[:1])
    with pytest.raises(ShsHandshakeError, match=r"phase 3.*1 of its 80"):
        client.receive_eof()


def test_oversized_challenge_runs_into_the_hello() -> None:
    """Extra bytes after msg1 are read as msg3: garbage there is an invalid hello."""
    client, server = pair()
    with pytest.raises(ShsHandshakeError, match="hello is invalid"):
        server.receive_data(client.initiate() + os.urandom(112))


def test_oversized_server_challenge_runs_into_the_accept() -> None:
    client, server = pair()
    msg2 = server.receive_data(client.initiate())
    with pytest.raises(ShsHandshakeError, match="accept is invalid"):
        client.receive_data(msg2 + os.urandom(80))


def test_low_order_ephemeral_with_a_valid_mac_is_refused() -> None:
    zero_point = bytes(32)
    server = ShsServer(APP, BOB)
    with pytest.raises(ShsHandshakeError, match="challenge is invalid"):
        server.receive_data(auth_tag(APP, zero_point) + zero_point)


def test_timeout_names_what_was_awaited() -> None:
    client, server = pair()
    client.initiate()
    assert "server's challenge (phase 2)" in str(client.timed_out(5))
    assert "client's challenge (phase 1)" in str(server.timed_out(0.1))
    assert str(server.timed_out(0.1)).startswith("shs.server: timed out after 0.1 s")


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="app key must be 32 bytes"):
        ShsClient(b"short", ALICE, BOB_PK)
    with pytest.raises(ValueError, match="server's public key"):
        ShsClient(APP, ALICE, b"x" * 31)
    with pytest.raises(ValueError, match="seed"):
        ShsServer(APP, b"")
    client = ShsClient(APP, ALICE, BOB_PK)
    with pytest.raises(RuntimeError):
        _ = client.keys
    client.initiate()
    with pytest.raises(RuntimeError):
        client.initiate()
