"""End to end with real relay processes: pair, echo, reconnect, failover, revoke, lockout."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import pytest

from keywire.errors import DialError, HandshakeError
from keywire.link import client
from keywire.link.handshake import DeviceRevoked, PairingBusy, PairingRefused
from keywire.link.spake2 import Spake2Error
from keywire.link.store import ClientStore

from .conftest import RelayProcess
from .helpers import EchoHost, dial, echo_once

pytestmark = pytest.mark.timeout(30)


async def test_pair_echo_then_reconnect_without_code(
    relay: RelayProcess, tmp_path: Path, private_config: Path
) -> None:
    host = await EchoHost([relay.url], tmp_path / "host").start()
    try:
        assert host.code is not None and len(host.code) == 9
        typed = host.code.lower().replace("-", " ")
        conn = await dial(host.announced, code=typed)
        assert await echo_once(conn, b"hello link" * 1000) == b"hello link" * 1000
        await conn.close()
        cred_file = private_config / "keywire" / "link" / "credentials.json"
        assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
        assert ClientStore().get(host.host.address) is not None
        host_file = tmp_path / "host" / "link" / f"host-{host.host.address}.json"
        assert stat.S_IMODE(host_file.stat().st_mode) == 0o600

        again = await dial(host.announced)  # credential, no code
        big = bytes(range(256)) * 4096
        assert await echo_once(again, big) == big
        s1, s2 = await again.open_stream(), await again.open_stream()
        await s1.write(b"one")
        await s2.write(b"two")
        assert await s2.readexactly(3) == b"two"
        assert await s1.readexactly(3) == b"one"
        await again.close()
    finally:
        await host.close()


async def test_code_is_single_use(relay: RelayProcess, tmp_path: Path) -> None:
    host = await EchoHost([relay.url], tmp_path / "host").start()
    try:
        assert host.code is not None
        first = await dial(host.announced, code=host.code)
        await first.close()
        ClientStore().forget(host.host.address)
        with pytest.raises(PairingRefused, match="used, expired or locked"):
            await dial(host.announced, code=host.code)
    finally:
        await host.close()


async def test_two_relays_failover_within_two_seconds(relay_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r1, r2 = relay_factory(), relay_factory()
    host = await EchoHost([r1.url, r2.url], tmp_path / "host").start()
    try:
        assert host.announced.count("~link:") == 2
        _, urls = client.relays_of(host.announced)
        assert urls == [r1.url, r2.url]
        assert host.code is not None
        await client.pair(host.announced, host.code)
        pipe = await client.connect(host.announced)
        assert pipe.peer.startswith(r1.url)
        await pipe.close()
        r1.kill()
        started = time.monotonic()
        pipe = await client.connect(host.announced)
        assert time.monotonic() - started < 2.0
        assert pipe.peer.startswith(r2.url)
        await pipe.close()
    finally:
        await host.close()


async def test_host_reregisters_when_relay_comes_back(relay_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r1 = relay_factory()
    host = await EchoHost([r1.url], tmp_path / "host").start()
    try:
        assert host.code is not None
        await client.pair(host.announced, host.code)
        port = r1.port
        r1.kill()
        await asyncio.sleep(0.3)
        relay_factory(port=port)
        deadline = time.monotonic() + 8
        while True:
            try:
                pipe = await client.connect(host.announced, timeout=3)
                break
            except DialError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        await pipe.close()
    finally:
        await host.close()


async def test_revoke_refuses_next_reconnect(relay: RelayProcess, tmp_path: Path) -> None:
    host = await EchoHost([relay.url], tmp_path / "host").start()
    try:
        assert host.code is not None
        credential, _ = await client.pair(host.announced, host.code)
        live = await client.connect(host.announced)
        assert host.host.revoke(credential.key_id)
        await asyncio.wait_for(live.closed.wait(), 5)  # a live session ends too
        with pytest.raises(DeviceRevoked, match="revoked"):
            await client.connect(host.announced)
        with pytest.raises(DeviceRevoked, match="revoked"):
            await dial(host.announced)
    finally:
        await host.close()


async def test_revoke_from_another_process_store(relay: RelayProcess, tmp_path: Path) -> None:
    from keywire.link.store import HostStore

    host = await EchoHost([relay.url], tmp_path / "host").start()
    try:
        assert host.code is not None
        credential, _ = await client.pair(host.announced, host.code)
        other = HostStore(host.host.address, tmp_path / "host")  # what the CLI does
        assert other.revoke(credential.key_id)
        with pytest.raises(DeviceRevoked):
            await client.connect(host.announced)
    finally:
        await host.close()


async def test_five_wrong_codes_do_not_lock_out_the_owner(
    relay: RelayProcess, tmp_path: Path
) -> None:
    host = await EchoHost([relay.url], tmp_path / "host").start("AAAA-AAAA")
    try:
        for _ in range(5):
            try:
                await client.pair(host.announced, "BBBB-BBBB")
            except PairingBusy:
                await asyncio.sleep(2.1)  # resting after the free guesses
                continue
            except Spake2Error as exc:
                assert "wrong code" in str(exc)
        entry = host.host.codebook.default
        assert entry is not None and not entry.locked
        await asyncio.sleep(max(0.0, entry.resting_until - asyncio.get_running_loop().time()))
        credential, _ = await client.pair(host.announced, "AAAA-AAAA")
        assert credential.address == host.host.address
    finally:
        await host.close()


async def test_no_credential_is_a_clear_error(relay: RelayProcess, tmp_path: Path) -> None:
    host = await EchoHost([relay.url], tmp_path / "host").start(False)
    try:
        with pytest.raises(HandshakeError, match="pair first"):
            await dial(host.announced)
    finally:
        await host.close()
