"""Katzenpost's key schedule against fixed vectors computed by an independent HKDF."""

from __future__ import annotations

import pytest

from keywire.store.schedule import KeySchedule, Role, split_secret
from keywire.store.secret import SecretError, format_secret, parse_secret

SECRET = bytes(range(32))
VECTORS = {
    "listener_secret": "8246c13a6853d18652d116718ff66e566e94870766e3d83e1334e21624b94654",
    "dialer_secret": "019f33a9e26cbbc012b4fd90b964839febfa6ca77c5111b9d0c5f2d8a3d7e8de",
    "listener_write_key": "3fdb291a6630228678158141bf991a99d3db7b144355cc7e4be59d0d0b7904c2",
    "listener_write_id": "20cb2e7e065493d0e3131a424f3b05a5c8858f455ec857f17f1a211e49c4e754",
    "dialer_write_key": "ead180c1a5e109dcbd86b0013ec866e527accd98e6c779098c306cd847f9ef96",
    "dialer_write_id": "fbf352c2c7e990e0c3a77ac9c59e3eadbfb6a6196131b64886788eb6125e204b",
}
FRAME_IDS = {
    0: (
        "739712e2e01579d610fcdf132956b9c69d51d170a758d7ab03ce68e99a87c72b",
        "0330e573846e591c3b6a754811f88b65bb1e42fac51c0b8227d0f8370ed91f18",
    ),
    1: (
        "68f2e0e89a12ff05d967e97088162ab1470e76d132698b1d33aa7991ca27b51b",
        "95f1bba13dda7c90770879e0ac69e6dfccd5a632a7ee9bd44f268bf4a4544943",
    ),
    1000: (
        "4c909b6b34187d31e214fc3217311dd0050359cfb9eca9b1727b422a9016e707",
        "4200afa0f16e092e642bfc351cd2836b13a9a75ed52bd73989f5198db89e4e41",
    ),
}


def test_sub_secrets() -> None:
    listener, dialer = split_secret(SECRET)
    assert listener.hex() == VECTORS["listener_secret"]
    assert dialer.hex() == VECTORS["dialer_secret"]


def test_direction_keys_by_role() -> None:
    lis = KeySchedule.derive(SECRET, Role.LISTENER)
    dia = KeySchedule.derive(SECRET, Role.DIALER)
    assert lis.write.key_base.hex() == VECTORS["listener_write_key"]
    assert lis.write.id_base.hex() == VECTORS["listener_write_id"]
    assert dia.write.key_base.hex() == VECTORS["dialer_write_key"]
    assert dia.write.id_base.hex() == VECTORS["dialer_write_id"]
    # each side reads what the other writes
    assert lis.read == dia.write and dia.read == lis.write


@pytest.mark.parametrize("index", sorted(FRAME_IDS))
def test_frame_id_and_key(index: int) -> None:
    keys = KeySchedule.derive(SECRET, Role.LISTENER).write
    frame_id, frame_key = FRAME_IDS[index]
    assert keys.frame_id(index).hex() == frame_id
    assert keys.frame_key(index).hex() == frame_key


def test_every_frame_has_its_own_address_and_key() -> None:
    keys = KeySchedule.derive(SECRET, Role.DIALER)
    ids = {keys.write.frame_id(i) for i in range(2000)} | {
        keys.read.frame_id(i) for i in range(2000)
    }
    assert len(ids) == 4000


def test_short_secret_refused() -> None:
    with pytest.raises(SecretError, match="at least 32"):
        split_secret(b"x" * 31)


def test_secret_text_forms() -> None:
    text = format_secret(SECRET)
    assert len(text) == 43 and "=" not in text
    assert parse_secret(text) == SECRET
    # Katzenpost's standard base64 with padding parses too
    import base64

    assert parse_secret(base64.b64encode(SECRET).decode()) == SECRET


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("abc", "at least 32"),
        ("a" * 300, "at most"),
        ("A" * 42 + "*", "not base64"),
        ("A" * 100, "at most 64"),
    ],
)
def test_bad_secrets(text: str, message: str) -> None:
    with pytest.raises(SecretError, match=message):
        parse_secret(text)
