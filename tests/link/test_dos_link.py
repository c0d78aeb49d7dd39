"""Denial of service by anyone who knows a host's address (issue 18, item 4).

Resolving the address from one source, or from many, must leave room for the host's real
clients; wrong pairing codes slow guessing down instead of locking the owner out, the host is
told about each, and the total number of guesses stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from keywire.link import client
from keywire.link.handshake import (
    FREE_GUESSES,
    MAX_PAIR_CONCURRENT,
    MAX_PAIR_GUESSES,
    ClientPairing,
    CodeBook,
    HostContext,
    HostHandshake,
    PairingBusy,
    PairingRefused,
    TokenBook,
)
from keywire.link.spake2 import Spake2Error
from tests.core.flood import fd_count, sources

from .conftest import RelayProcess
from .helpers import EchoHost, dial, echo_once
from .rawclient import recv, send

pytestmark = pytest.mark.timeout(90)
PAYLOAD = os.urandom(1 << 20)


async def resolver(url: str, address: str, source: str) -> tuple[ClientConnection, str]:
    """A socket from ``source`` that resolves ``address`` and then just waits."""
    sock = await connect(url, compression=None, local_addr=(source, 0))
    await send(sock, {"type": "resolve", "address": address})
    try:
        reply = await asyncio.wait_for(recv(sock), 5)
        return sock, str(reply.get("type"))
    except Exception:
        return sock, f"closed {sock.close_code}"


async def legit_echo(host: EchoHost) -> None:
    assert host.code is not None or host.host.tokens.tokens
    conn = await dial(host.announced, code=host.code, timeout=10)
    try:
        assert await echo_once(conn, PAYLOAD) == PAYLOAD
    finally:
        await conn.close()


async def test_resolves_from_one_ip_do_not_lock_out_other_ips(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    relay = relay_factory("--max-bps", "0")
    host = await EchoHost([relay.url], tmp_path / "host").start()
    socks: list[ClientConnection] = []
    try:
        replies: list[str] = []
        for _ in range(100):
            sock, reply = await resolver(relay.url, host.host.address, "127.0.0.2")
            socks.append(sock)
            replies.append(reply)
        assert replies.count("found") == 8  # the per-IP share of the host's waiting room
        await legit_echo(host)  # from 127.0.0.1, while the 100 are held
    finally:
        for sock in socks:
            await sock.close()
        await host.close()


async def test_resolves_from_many_ips_leave_room_for_a_real_client(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    relay = relay_factory("--max-bps", "0")
    base = fd_count(relay.proc.pid)
    host = await EchoHost([relay.url], tmp_path / "host").start()
    socks: list[ClientConnection] = []
    try:
        # 16 sources × 8 = 128 waiting clients: twice the host's waiting room of 64
        for source in sources(16, "127.0.4."):
            for _ in range(8):
                sock, reply = await resolver(relay.url, host.host.address, source)
                socks.append(sock)
                assert reply == "found", reply  # the crowd makes room for each newcomer
        await legit_echo(host)
        await legit_echo(host)  # and again: the credential's reconnect gets in too
    finally:
        for sock in socks:
            await sock.close()
        await host.close()
    await asyncio.sleep(1.0)
    assert fd_count(relay.proc.pid) <= base + 10


async def test_wrong_codes_slow_guessing_and_tell_the_host(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_factory("--max-bps", "0")
    host = await EchoHost([relay.url], tmp_path / "host").start("AAAA-AAAA")
    caplog.set_level(logging.WARNING, "keywire.link")
    try:
        outcomes: list[str] = []
        for _ in range(FREE_GUESSES + 2):
            try:
                await client.pair(host.announced, "BBBB-BBBB")
            except PairingBusy:
                outcomes.append("busy")
            except Spake2Error:
                outcomes.append("wrong")
        # the free guesses are answered, then the code rests (1 s) and says so
        assert outcomes[: FREE_GUESSES + 1] == ["wrong"] * (FREE_GUESSES + 1)
        assert outcomes[-1] == "busy"
        status = [r.getMessage() for r in caplog.records if "pairing:" in r.getMessage()]
        assert len(status) == FREE_GUESSES + 1 and "wrong guess" in status[-1]
        assert "takes no guess for 1 s" in status[-1]
        await asyncio.sleep(1.1)
        credential, _ = await client.pair(host.announced, "AAAA-AAAA")  # the owner gets in
        conn = await dial(host.announced, timeout=10)
        try:
            assert await echo_once(conn, PAYLOAD) == PAYLOAD
        finally:
            await conn.close()
        assert credential.address == host.host.address
    finally:
        await host.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fastest_guesser(seconds: float) -> tuple[int, bool, float]:
    """Guess wrong as fast as the host allows, ``MAX_PAIR_CONCURRENT`` at a time, for
    ``seconds``: (guesses made, locked, seconds until locked or the end)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    clock = Clock()
    book = CodeBook(clock)
    entry = book.open("AAAA-AAAA")
    ctx = HostContext(X25519PrivateKey.generate(), "addr", book, TokenBook())
    start, guesses = clock.now, 0
    while clock.now - start < seconds and not entry.locked:
        slots = []
        for _ in range(MAX_PAIR_CONCURRENT):
            try:
                slots.append(book.reserve(entry.code_id))
            except PairingBusy:
                break
            except PairingRefused:
                break
        for slot in slots:
            book.failed(slot)
            guesses += 1
        wait = entry.resting_until - clock.now
        clock.now += max(wait, 0.01)
    assert isinstance(ctx.codebook, CodeBook) and HostHandshake(ctx).step.value == "header"
    assert ClientPairing("AAAA-AAAA", "addr").header is not None
    return guesses, entry.locked, clock.now - start


def test_guesses_are_bounded_in_a_lifetime_and_in_all() -> None:
    in_ttl, locked, _ = fastest_guesser(900)  # a default code lives 15 minutes
    assert not locked and in_ttl <= 50
    total, locked, took = fastest_guesser(10 * 3600)
    assert locked and total == MAX_PAIR_GUESSES  # at most 100 chances in 2^40
    assert took >= 45 * 60
