"""Every record of npm test-secret-handshake's data.json, replayed step by step.

Each JS step mutates its state argument before the record is written, so a record's
``args[0]`` shows the state *after* the step: inputs are taken from the fields that existed
before it, outputs compared with what the record shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keywire.shs.steps import Transcript, ephemeral_from_random, keypair_from_seed

RECORDS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "test-secret-handshake-data.json").read_text()
)


def h(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value else None


def hb(value: str | None) -> bytes:
    out = h(value)
    assert out is not None
    return out


def transcript(state: dict[str, Any], **fields: bytes | None) -> Transcript:
    """A transcript holding the state's keys plus exactly the given derived fields."""
    local = state["local"]
    remote = state.get("remote") or {}
    return Transcript(
        app_key=hb(state["app_key"]),
        local_public=hb(local["publicKey"]),
        local_secret=hb(local["secretKey"]),
        local_kx_public=hb(local["kx_pk"]),
        local_kx_secret=h(local.get("kx_sk")) or b"",
        local_app_mac=hb(local["app_mac"]),
        remote_public=fields.pop("remote_public", h(remote.get("publicKey"))),
        **fields,
    )


def session_secret3(index: int) -> bytes:
    """``clean`` records have secret3 wiped: take it from the same side's earlier step."""
    kx = RECORDS[index]["args"][0]["local"]["kx_pk"]
    for record in reversed(RECORDS[:index]):
        state = record["args"][0]
        if (
            isinstance(state, dict)
            and state.get("local", {}).get("kx_pk") == kx
            and state.get("secret3")
        ):
            return hb(state["secret3"])
    raise AssertionError(f"no secret3 before record {index}")


def check(index: int) -> int:
    """Replay record ``index``; returns how many values were compared."""
    record = RECORDS[index]
    name, args, result = record["name"], record["args"], record["result"]
    if name == "toKeys":
        # a 32-byte seed becomes a keypair; a keypair passes through (and is its seed's pair)
        seed = hb(args[0]["secretKey"])[:32] if isinstance(args[0], dict) else hb(args[0])
        pk, sk = keypair_from_seed(seed)
        assert (pk, sk) == (hb(result["publicKey"]), hb(result["secretKey"]))
        return 2
    state = args[0]
    local, remote = state["local"], state.get("remote") or {}
    if name == "initialize":
        secret = (
            keypair_from_seed(hb(state["seed"]))[1] if state.get("seed") else hb(local["secretKey"])
        )
        t = Transcript.start(hb(state["app_key"]), secret, hb(state["random"]))
        assert ephemeral_from_random(hb(state["random"])) == (t.local_kx_public, t.local_kx_secret)
        assert t.local_kx_public == hb(result["local"]["kx_pk"])
        assert t.local_kx_secret == hb(result["local"]["kx_sk"])
        assert t.local_app_mac == hb(result["local"]["app_mac"])
        assert t.local_public == hb(result["local"]["publicKey"])
        assert t.local_secret == hb(result["local"]["secretKey"])
        return 5
    if name == "createChallenge":
        assert transcript(state).challenge() == hb(result)
        return 1
    if name == "verifyChallenge":
        t = transcript(state, remote_public=None)
        ok = t.verify_challenge(hb(args[1]))
        if result is None:
            assert not ok
            return 1
        assert ok
        assert t.remote_kx_public == hb(result["remote"]["kx_pk"])
        assert t.remote_app_mac == hb(result["remote"]["app_mac"])
        assert (t.secret, t.shash) == (hb(result["secret"]), hb(result["shash"]))
        return 4
    if name == "clientVerifyChallenge":
        t = transcript(state)
        ok = t.client_verify_challenge(hb(args[1]))
        if result is None:
            assert not ok
            return 1
        assert ok
        assert (t.secret, t.shash) == (hb(result["secret"]), hb(result["shash"]))
        assert (t.a_bob, t.secret2) == (hb(result["a_bob"]), hb(result["secret2"]))
        assert t.local_hello == hb(result["local"]["hello"])
        return 5
    if name == "clientCreateAuth":
        t = transcript(state, secret2=hb(state["secret2"]), local_hello=hb(local["hello"]))
        assert t.client_create_auth() == hb(result)
        return 1
    if name == "serverVerifyAuth":
        t = transcript(
            state,
            remote_public=None,
            remote_kx_public=hb(remote["kx_pk"]),
            secret=hb(state["secret"]),
            shash=hb(state["shash"]),
        )
        ok = t.server_verify_auth(hb(args[1]))
        if result is None:
            assert not ok
            return 1
        assert ok
        assert (t.a_bob, t.secret2) == (hb(result["a_bob"]), hb(result["secret2"]))
        assert t.remote_hello == hb(result["remote"]["hello"])
        assert t.remote_public == hb(result["remote"]["publicKey"])
        assert (t.b_alice, t.secret3) == (hb(result["b_alice"]), hb(result["secret3"]))
        return 6
    if name == "serverCreateAccept":
        t = transcript(
            state,
            remote_hello=hb(remote["hello"]),
            shash=hb(state["shash"]),
            secret3=hb(state["secret3"]),
        )
        assert t.server_create_accept() == hb(result)
        return 1
    if name == "clientVerifyAccept":
        t = transcript(
            state,
            remote_kx_public=hb(remote["kx_pk"]),
            secret=hb(state["secret"]),
            shash=hb(state["shash"]),
            a_bob=hb(state["a_bob"]),
            local_hello=hb(local["hello"]),
        )
        ok = t.client_verify_accept(hb(args[1]))
        if result is None:
            assert not ok
            return 1
        assert ok
        assert (t.b_alice, t.secret3) == (hb(result["b_alice"]), hb(result["secret3"]))
        return 3
    if name == "clean":
        t = transcript(state, remote_app_mac=hb(remote["app_mac"]), secret3=session_secret3(index))
        assert t.session_secret() == hb(result["secret"])
        enc_key, enc_nonce, dec_key, dec_nonce = t.box_keys()
        assert (enc_key, dec_key) == (hb(result["encryptKey"]), hb(result["decryptKey"]))
        # protocol.js: encrypt from the remote's MAC, decrypt from our own
        assert (enc_nonce, dec_nonce) == (hb(remote["app_mac"])[:24], hb(local["app_mac"])[:24])
        return 4
    raise AssertionError(f"record {index}: unknown step {name!r}")


def test_the_file_has_159_records() -> None:
    assert len(RECORDS) == 159
    names = {r["name"] for r in RECORDS}
    assert names == {
        "initialize",
        "createChallenge",
        "verifyChallenge",
        "clientVerifyChallenge",
        "clientCreateAuth",
        "serverVerifyAuth",
        "serverCreateAccept",
        "clientVerifyAccept",
        "clean",
        "toKeys",
    }


@pytest.mark.parametrize("index", range(len(RECORDS)))
def test_record(index: int) -> None:
    assert check(index) >= 1


def test_every_record_compared() -> None:
    total = sum(check(i) for i in range(len(RECORDS)))
    failures = sum(1 for r in RECORDS if r["result"] is None)
    assert failures == 7  # rejected challenges and hellos are in the file too
    assert total == 526
