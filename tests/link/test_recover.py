"""Recover mode (Link's mode 2): a long-lived recovery key gets a device a new credential.

The sans-IO machines are driven frame by frame first (mode binding, refunds, the cap, refusals);
then real relay processes, a real host and real clients run the same cases over loopback.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed as WsClosed

from keywire.identity import Identity
from keywire.link import client, codes
from keywire.link.handler import LinkHandler, recovery_setting
from keywire.link.handshake import (
    ClientPairing,
    ClientRecovery,
    DeviceRevoked,
    HostContext,
    HostHandshake,
    PairingRefused,
    RecoverBusy,
    RecoveryGate,
    RecoveryUnavailable,
    recovery_scalar,
)
from keywire.link.host import LinkHost
from keywire.link.relayconn import introduce
from keywire.link.spake2 import Role, Spake2, Spake2Error
from keywire.link.store import ClientStore, RecoveryStore
from keywire.link.wire import (
    SPAKE2_ID_CLIENT,
    SPAKE2_ID_HOST,
    Header,
    LinkProtocolError,
    Mode,
    Refusal,
    parse_refusal,
)
from keywire.options import Options

from .conftest import SRC, RelayProcess
from .helpers import EchoHost, echo_once, parse_link_cli
from .test_handshake import ADDRESS, make_host, run

pytestmark = pytest.mark.timeout(30)

KEY = "7K3M-9QXR-2VHD-TB6N-4JWC-8FZP-5GSA"


def recovering_host(key: str = KEY, cap: int = 4) -> HostContext:
    ctx = make_host()
    ctx.recovery = RecoveryGate.from_key(key, cap)
    return ctx


# -- sans-IO -----------------------------------------------------------------------------------


def test_recover_issues_a_fresh_credential_and_the_key_is_not_burned() -> None:
    ctx = recovering_host()
    first = ClientRecovery(KEY.lower().replace("-", " "), ADDRESS)  # typed differently
    host = HostHandshake(ctx)
    run(first, host)
    assert first.credential is not None and host.key_id == first.credential.key_id
    assert first.header.encode() == b"FLk1\x01\x02"
    second = ClientRecovery(KEY, ADDRESS)
    run(second, HostHandshake(ctx))
    assert second.credential is not None
    assert second.credential.key_id != first.credential.key_id
    assert set(ctx.tokens.tokens) == {first.credential.key_id, second.credential.key_id}
    assert ctx.recovery is not None and ctx.recovery.in_flight == 0


def test_wrong_keys_are_refunded_never_locked() -> None:
    ctx = recovering_host()
    wrong = codes.generate_recovery_key()
    for _ in range(8):
        with pytest.raises(Spake2Error):
            run(ClientRecovery(wrong, ADDRESS), HostHandshake(ctx))
    assert ctx.recovery is not None and ctx.recovery.in_flight == 0
    right = ClientRecovery(KEY, ADDRESS)
    run(right, HostHandshake(ctx))
    assert right.credential is not None


def test_the_header_mode_is_bound_into_the_confirmation_keys() -> None:
    w = recovery_scalar(KEY)
    x, y = 0x1234567, 0x7654321
    results = {}
    for mode_header in (Header.pair(), Header.recover()):
        aad = mode_header.encode()
        a = Spake2(Role.A, w, SPAKE2_ID_CLIENT, SPAKE2_ID_HOST, aad=aad, scalar=x)
        b = Spake2(Role.B, w, SPAKE2_ID_CLIENT, SPAKE2_ID_HOST, aad=aad, scalar=y)
        results[mode_header.mode] = a.finish(b.share())
    pair, recover = results[Mode.PAIR], results[Mode.RECOVER]
    assert pair.ke == recover.ke and pair.transcript == recover.transcript  # same exchange
    assert pair.kca != recover.kca and pair.kcb != recover.kcb  # but other confirmation keys
    with pytest.raises(Spake2Error):
        pair.check_peer_confirmation(Role.B, recover.confirm_a)


def test_a_relay_rewriting_the_mode_breaks_the_confirmation() -> None:
    """A recover attempt relabelled as pairing (with a code equal to the key) cannot confirm."""
    client = ClientRecovery(KEY, ADDRESS)
    header, share = client.start()
    relabelled = Header.pair().encode()
    b = Spake2(Role.B, recovery_scalar(KEY), SPAKE2_ID_CLIENT, SPAKE2_ID_HOST, aad=relabelled)
    result = b.finish(share)
    confirm_a = client.receive(b.share())[0]
    assert header != relabelled
    with pytest.raises(Spake2Error):
        result.check_peer_confirmation(Role.B, confirm_a)


def test_a_host_without_a_recovery_key_refuses_mode_2() -> None:
    ctx = make_host()
    host = HostHandshake(ctx)
    with pytest.raises(RecoveryUnavailable, match="no recovery key"):
        run(ClientRecovery(KEY, ADDRESS), host)
    assert host.refusal is not None and "no recovery key" in host.refusal
    assert parse_refusal(b"FLk1\x00\x03") is Refusal.NO_RECOVERY_KEY
    assert parse_refusal(b"FLk1\x00\x04") is Refusal.RECOVER_BUSY


def test_recover_with_version_2_is_refused() -> None:
    ctx = recovering_host()
    with pytest.raises(LinkProtocolError, match="version 2"):
        HostHandshake(ctx).receive(b"FLk1\x02\x02" + b"\x01" * 8)
    assert ctx.recovery is not None and ctx.recovery.in_flight == 0


def test_the_cap_refuses_one_more_and_frees_its_slots() -> None:
    ctx = recovering_host(cap=2)
    held = [HostHandshake(ctx), HostHandshake(ctx)]
    for host in held:
        host.receive(ClientRecovery(KEY, ADDRESS).start()[0])
    assert ctx.recovery is not None and ctx.recovery.in_flight == 2
    with pytest.raises(RecoverBusy, match="try again"):
        run(ClientRecovery(KEY, ADDRESS), HostHandshake(ctx))
    held[0].abort()  # a timeout or a dropped client
    fine = ClientRecovery(KEY, ADDRESS)
    run(fine, HostHandshake(ctx))
    assert fine.credential is not None and ctx.recovery.in_flight == 1


def test_pairing_codes_and_recovery_keys_do_not_mix() -> None:
    """A recovery key typed as a pairing code (mode 1) does not pair, and vice versa."""
    ctx = recovering_host()
    with pytest.raises(PairingRefused, match="pairing code"):  # no code open: refused
        run(ClientPairing("ABCD-EFGH", ADDRESS), HostHandshake(ctx))
    book_ctx = make_host()
    book_ctx.codebook.open("ABCD-EFGH", with_id=False)
    with pytest.raises(RecoveryUnavailable):
        run(ClientRecovery(KEY, ADDRESS), HostHandshake(book_ctx))


@pytest.mark.parametrize(
    "weak", ["ABCD-EFGH", "0123-4567-89AB-CDEF-GHJ", "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", "ABAB" * 7]
)
def test_a_weak_recovery_key_is_rejected(weak: str) -> None:
    with pytest.raises(codes.RecoveryKeyError, match=r"at least 100 bits|must be random"):
        RecoveryGate.from_key(weak)
    with pytest.raises(codes.RecoveryKeyError):
        recovery_setting(Options(extra={"link.recovery_key": weak}))


async def test_a_weak_key_fails_listen_before_any_network(tmp_path: Path) -> None:
    options = Options(
        identity=Identity.generate(),
        extra={"link.store_dir": str(tmp_path), "link.recovery_key": "SHORT-KEY"},
    )
    from keywire.address import parse

    alt = parse("ws://127.0.0.1:9/v1/link~link").alternatives[0]
    with pytest.raises(codes.RecoveryKeyError, match="100 bits"):
        await LinkHandler().listen(alt, options, lambda conn: asyncio.sleep(0))
    host = LinkHost.from_identity(Identity.generate(), store_dir=tmp_path)
    try:
        with pytest.raises(codes.RecoveryKeyError, match="100 bits"):
            host.set_recovery_key("0123456789")
        assert host.ctx.recovery is None
    finally:
        await host.close()


@pytest.mark.parametrize("value,expected", [(None, 4), (1, 1), ("3", 3), (64, 64)])
def test_recover_concurrency_setting(value: object, expected: int) -> None:
    extra = {} if value is None else {"link.recover_concurrency": value}
    assert recovery_setting(Options(extra=extra))[1] == expected


@pytest.mark.parametrize("value", [0, -1, "x", "", True, 2.5, None])
def test_bad_recover_concurrency_is_a_clear_error(value: object) -> None:
    with pytest.raises(ValueError, match="recover_concurrency"):
        recovery_setting(Options(extra={"link.recover_concurrency": value}))


def test_generated_keys_are_long_canonical_and_random() -> None:
    keys = {codes.generate_recovery_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        bare = key.replace("-", "")
        assert len(bare) == 28 and 5 * len(bare) >= 128
        assert key == codes.normalise_recovery_key(key)
        assert all(len(group) == 4 for group in key.split("-"))


def test_normaliser_examples() -> None:
    assert codes.normalise_recovery_key(" 7k3m 9qxr 2vhd tb6n 4jwc 8fzp 5gsa ") == KEY
    assert codes.normalise_recovery_key("oIl" + KEY[3:]) == "011" + KEY[3:]
    assert codes.normalise_recovery_key("0123456789ABCDEFGHJK") == "0123-4567-89AB-CDEF-GHJK"
    with pytest.raises(codes.RecoveryKeyError, match="'U' at position 3"):
        codes.normalise_recovery_key("7K3U" + KEY[4:])
    with pytest.raises(codes.RecoveryKeyError, match="at most 64"):
        codes.normalise_recovery_key(KEY * 3)
    with pytest.raises(codes.RecoveryKeyError, match="is text"):
        codes.normalise_recovery_key(b"bytes")  # type: ignore[arg-type]


@given(
    st.one_of(st.text(max_size=120), st.text(alphabet=codes.ALPHABET + "iloIlo- \t", max_size=80))
)
def test_fuzz_recovery_key_normaliser_is_total(text: str) -> None:
    try:
        canonical = codes.normalise_recovery_key(text)
    except codes.RecoveryKeyError as exc:
        assert "recovery key" in str(exc)
        return
    assert codes.normalise_recovery_key(canonical) == canonical
    assert codes.normalise_recovery_key(text.lower()) == canonical
    assert codes.normalise_recovery_key(text.upper().replace("-", " ")) == canonical
    bare = canonical.replace("-", "")
    assert set(bare) <= set(codes.ALPHABET) and 20 <= len(bare) <= 64
    assert all(len(g) == 4 for g in canonical.split("-")[:-1])


async def test_generated_key_is_saved_as_w_only_and_reused(tmp_path: Path) -> None:
    identity = Identity.generate()
    host = LinkHost.from_identity(identity, store_dir=tmp_path)
    try:
        key = host.set_recovery_key(True)
        assert key is not None and host.ctx.recovery is not None
        saved = RecoveryStore(host.address, tmp_path)
        assert stat.S_IMODE(saved.path.stat().st_mode) == 0o600
        text = saved.path.read_text()
        assert key not in text and key.replace("-", "") not in text
        assert saved.load() == recovery_scalar(key) == host.ctx.recovery.w
    finally:
        await host.close()
    again = LinkHost.from_identity(identity, store_dir=tmp_path, recovery_key=True)
    try:  # a restart reuses the saved key and has nothing new to show
        assert again.unsaved_recovery_key is None
        assert again.ctx.recovery is not None and again.ctx.recovery.w == recovery_scalar(key)
        assert again.set_recovery_key(None) is None and again.ctx.recovery is None
    finally:
        await again.close()


# -- end to end: real relay, real host, real clients -------------------------------------------


async def start_host(
    url: str, store: Path, key: str | bool = KEY, cap: int = 4, pairing_code: bool = False
) -> EchoHost:
    extra: dict[str, object] = {"link.recovery_key": key, "link.recover_concurrency": cap}
    return await EchoHost([url], store, extra=extra).start(pairing_code)


async def test_recover_then_reconnect_and_recover_again(
    relay: RelayProcess, tmp_path: Path
) -> None:
    host = await start_host(relay.url, tmp_path / "host")
    try:
        credential, via = await client.recover(host.announced, KEY.lower())
        assert via == relay.url and credential.address == host.host.address
        assert ClientStore().get(host.host.address) == credential
        conn = await client.connect(host.announced)  # Noise NKpsk0 with the new token
        await conn.close()
        from .helpers import dial

        mux = await dial(host.announced)
        assert await echo_once(mux, b"recovered" * 500) == b"recovered" * 500
        await mux.close()
        # another device (its own store) recovers with the same key: not burned
        other, _ = await client.recover(host.announced, KEY, store_dir=tmp_path / "phone")
        assert other.key_id != credential.key_id
        assert set(host.host.tokens.devices()) >= {
            c.to_json()["keyId"] for c in (credential, other)
        }
        pipe = await client.connect(host.announced, store_dir=tmp_path / "phone")
        await pipe.close()
        pipe = await client.connect(host.announced)  # the first credential still works
        await pipe.close()
    finally:
        await host.close()


async def test_dial_option_recovers_when_no_credential(relay: RelayProcess, tmp_path: Path) -> None:
    from keywire.address import parse

    host = await start_host(relay.url, tmp_path / "host")
    try:
        conn = await LinkHandler().dial(
            parse(host.announced).alternatives[0],
            Options(timeout=5, extra={"link.recovery_key": KEY}),
        )
        assert await echo_once(conn, b"via dial") == b"via dial"
        await conn.close()
        assert ClientStore().get(host.host.address) is not None
    finally:
        await host.close()


async def test_eight_wrong_keys_then_the_right_one(relay: RelayProcess, tmp_path: Path) -> None:
    host = await start_host(relay.url, tmp_path / "host")
    try:
        wrong = codes.generate_recovery_key()
        for _ in range(8):
            with pytest.raises(Spake2Error, match="wrong recovery key"):
                await client.recover(host.announced, wrong)
        gate = host.host.ctx.recovery
        assert gate is not None and gate.in_flight == 0
        credential, _ = await client.recover(host.announced, KEY)
        assert host.host.tokens.get(credential.key_id) == credential.token
    finally:
        await host.close()


async def test_wrong_recovery_key_fails_like_a_wrong_pairing_code(
    relay: RelayProcess, tmp_path: Path
) -> None:
    host = await start_host(relay.url, tmp_path / "host", pairing_code=True)
    try:
        errors = []
        for attempt in (
            client.recover(host.announced, codes.generate_recovery_key()),
            client.pair(host.announced, "ZZZZ-ZZZZ"),
        ):
            with pytest.raises(Spake2Error) as info:
                await attempt
            errors.append(type(info.value))
        assert errors[0] is errors[1]
    finally:
        await host.close()


async def test_concurrency_cap_refuses_the_extra_attempt(
    relay: RelayProcess, tmp_path: Path
) -> None:
    host = await start_host(relay.url, tmp_path / "host", cap=2)
    stalled = []
    try:
        for _ in range(2):  # two attempts that stop after the host's share
            machine = ClientRecovery(KEY, host.host.address)
            ws = await introduce(relay.url, host.host.address, 5)
            for frame in machine.start():
                await ws.send(frame)
            share = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(share, bytes) and len(share) == 65
            stalled.append(ws)
        gate = host.host.ctx.recovery
        assert gate is not None and gate.in_flight == 2
        with pytest.raises(RecoverBusy, match="try again shortly"):
            await client.recover(host.announced, KEY)
        for ws in stalled:
            await ws.close()
        for _ in range(100):  # the host notices the dropped clients and frees the slots
            if gate.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert gate.in_flight == 0
        credential, _ = await client.recover(host.announced, KEY)
        assert credential.address == host.host.address
    finally:
        for ws in stalled:
            await ws.close()
        await host.close()


async def test_host_without_recovery_key_refuses_mode_2(
    relay: RelayProcess, tmp_path: Path
) -> None:
    host = await EchoHost([relay.url], tmp_path / "host").start(True)
    try:
        with pytest.raises(RecoveryUnavailable, match="no recovery key"):
            await client.recover(host.announced, KEY)
        assert host.code is not None  # and the host carries on: pairing still works
        await client.pair(host.announced, host.code)
    finally:
        await host.close()


async def test_recover_header_version_2_is_refused_end_to_end(
    relay: RelayProcess, tmp_path: Path
) -> None:
    host = await start_host(relay.url, tmp_path / "host")
    try:
        machine = ClientRecovery(KEY, host.host.address)
        ws = await introduce(relay.url, host.host.address, 5)
        await ws.send(b"FLk1\x02\x02" + b"\x00" * 8)
        await ws.send(machine.start()[1])
        with pytest.raises(WsClosed):
            await asyncio.wait_for(ws.recv(), 5)  # the host hangs up: no share comes back
        gate = host.host.ctx.recovery
        assert gate is not None and gate.in_flight == 0
        await client.recover(host.announced, KEY)  # and the host carries on
    finally:
        await host.close()


async def test_revoking_a_recovered_device(relay: RelayProcess, tmp_path: Path) -> None:
    host = await start_host(relay.url, tmp_path / "host")
    try:
        credential, _ = await client.recover(host.announced, KEY)
        live = await client.connect(host.announced)
        assert host.host.revoke(credential.key_id)
        await asyncio.wait_for(live.closed.wait(), 5)
        with pytest.raises(DeviceRevoked):
            await client.connect(host.announced)
        again, _ = await client.recover(host.announced, KEY)  # the owner gets back in
        assert again.key_id != credential.key_id
        pipe = await client.connect(host.announced)
        await pipe.close()
    finally:
        await host.close()


async def test_generated_key_is_shown_once_and_works(relay: RelayProcess, tmp_path: Path) -> None:
    shown: list[tuple[str, str]] = []
    extra: dict[str, object] = {
        "link.recovery_key": True,
        "link.on_recovery_key": lambda a, k: shown.append((a, k)),
    }
    host = await EchoHost([relay.url], tmp_path / "host", extra=extra).start(False)
    try:
        for _ in range(60):
            if shown:
                break
            await asyncio.sleep(0.05)
        assert len(shown) == 1 and shown[0][0] == host.announced
        key = shown[0][1]
        assert len(key.replace("-", "")) == 28
        assert RecoveryStore(host.host.address, tmp_path / "host").load() == recovery_scalar(key)
        await client.recover(host.announced, key)
    finally:
        await host.close()


async def test_cli_pair_with_recovery_key(
    relay: RelayProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = await start_host(relay.url, tmp_path / "host")
    try:
        args = parse_link_cli(["pair", host.announced, "--recovery-key", KEY])
        assert await args.func(args) == 0
        assert "recovered access to" in capsys.readouterr().err
        assert ClientStore().get(host.host.address) is not None
        for argv in (
            ["pair", host.announced],
            ["pair", host.announced, "ABCD-EFGH", "--recovery-key", KEY],
            ["pair", host.announced, "--recovery-key", KEY, "--code-id", "00" * 8],
        ):
            args = parse_link_cli(argv)
            assert await args.func(args) == 2
        assert "either CODE or --recovery-key" in capsys.readouterr().err
        args = parse_link_cli(["pair", host.announced, "--recovery-key", "ABCD-EFGH"])
        assert await args.func(args) == 1
        assert "at least 100 bits" in capsys.readouterr().err
    finally:
        await host.close()


def test_cli_listen_prints_a_generated_key_once(relay: RelayProcess, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keywire",
            "listen",
            f"{relay.url}~link",
            "--recovery-key",
            "--no-qr",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        address = proc.stdout.readline().strip()
        assert "~link:" in address, proc.stderr.read() if proc.poll() is not None else address
        key = ""
        for _ in range(40):
            line = proc.stderr.readline()
            if line.startswith("recovery key:"):
                key = line.split(":", 1)[1].strip()
                break
        assert len(key.replace("-", "")) == 28

        async def use() -> None:
            await client.recover(address, key, store_dir=tmp_path / "client")

        asyncio.run(use())
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
