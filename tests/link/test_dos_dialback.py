"""Clients that ask for a dial-back and then stay silent must not keep a host's real clients
out (issue 18, item 4): the relay cannot tell them apart, so the host gives each unauthenticated
dial-back a short deadline, drops the oldest for a newcomer when its cap is full, and takes only
handshake-sized frames before the peer authenticates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from keywire.link.host import MAX_DIALBACKS, PRE_AUTH_MAX_FRAME, dialback_timeout_setting
from tests.core.flood import fd_count, sources

from .conftest import RelayProcess
from .helpers import EchoHost, dial, echo_once
from .rawclient import recv, send

pytestmark = pytest.mark.timeout(120)
PAYLOAD = os.urandom(1 << 20)
CAP = MAX_DIALBACKS // 4


async def silent_client(url: str, address: str, source: str) -> ClientConnection | None:
    """Resolve ``address`` from ``source``, ask for the relay, and wait for the splice; the
    socket then says nothing (the host cannot know it is not a real client)."""
    sock = await connect(url, compression=None, local_addr=(source, 0), close_timeout=0.5)
    try:
        await send(sock, {"type": "resolve", "address": address})
        found = await asyncio.wait_for(recv(sock), 5)
        if found.get("type") != "found":
            await sock.close()
            return None
        await send(sock, {"type": "relay", "linkId": found["linkId"]})
        relaying = await asyncio.wait_for(recv(sock), 5)
        if relaying.get("type") != "relaying":
            await sock.close()
            return None
    except Exception:
        await sock.close()
        return None
    return sock


async def attacker(url: str, address: str, source: str, stop: asyncio.Event) -> int:
    """Keep one silent dial-back held until ``stop``: when the host drops it, ask again."""
    spliced = 0
    while not stop.is_set():
        sock = await silent_client(url, address, source)
        if sock is None:
            await asyncio.sleep(0.5)  # refused (rate-limited): ask again shortly
            continue
        spliced += 1
        try:
            waiter = asyncio.ensure_future(sock.wait_closed())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (waiter, stopper):
                fut.cancel()
        finally:
            await sock.close()
    return spliced


async def test_silent_dialbacks_do_not_keep_a_paired_client_out(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    # the relay's own per-IP rate (60 resolves a minute) bounds how fast the attackers churn;
    # the host and its client share 127.0.0.1 here, so the host's burst of dial-back upgrades
    # must not use up the client's per-IP upgrade share (they come from different IPs in use)
    relay = relay_factory("--max-bps", "0", "--max-upgrading-per-ip", "256")
    host = await EchoHost([relay.url], tmp_path / "host").start()
    uplink = host.host.uplinks[relay.url]
    uplink.max_dialbacks = CAP  # the policy at a quarter of the default cap: fewer sockets
    stop = asyncio.Event()
    attackers: list[asyncio.Task[int]] = []
    try:
        async with asyncio.timeout(90):
            first = await dial(host.announced, code=host.code, timeout=10)  # pair, then stay
            assert await echo_once(first, PAYLOAD) == PAYLOAD
            await asyncio.sleep(0.5)
            base = fd_count()
            # 8 sources × 3 = 24 silent clients at once: half again the host's cap
            for source in sources(8, "127.0.6."):
                for _ in range(3):
                    attackers.append(
                        asyncio.create_task(attacker(relay.url, host.host.address, source, stop))
                    )
            deadline = time.monotonic() + 20
            while uplink.dialbacks_dropped < 8 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert uplink.dialbacks_dropped >= 8, "the attack never filled the host's cap"
            assert len(uplink._pending) <= CAP
            timings = []
            for _ in range(3):  # a paired client reconnects and echoes during the attack
                started = time.monotonic()
                conn = await dial(host.announced, timeout=10)
                try:
                    assert await echo_once(conn, PAYLOAD) == PAYLOAD
                finally:
                    await conn.close()
                timings.append(time.monotonic() - started)
            dropped_during = uplink.dialbacks_dropped
            assert await echo_once(first, PAYLOAD) == PAYLOAD  # the established session held
            stop.set()
            spliced = sum(await asyncio.gather(*attackers))
            assert spliced > CAP  # the host saw more silent clients than its cap
            print(f"dropped {dropped_during}, spliced {spliced}, echo s {timings}")
            await first.close()
            await asyncio.sleep(2.0)
            assert not uplink._pending
            assert fd_count() <= base + 10, (fd_count(), base)
            conn = await dial(host.announced, timeout=10)  # and after the attack
            try:
                assert await echo_once(conn, PAYLOAD) == PAYLOAD
            finally:
                await conn.close()
    finally:
        stop.set()
        for task in attackers:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*attackers, return_exceptions=True)
        await host.close()


async def test_a_silent_dialback_is_dropped_at_its_deadline(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    relay = relay_factory("--max-bps", "0")
    host = await EchoHost(
        [relay.url], tmp_path / "host", extra={"link.dialback_timeout": "1.5"}
    ).start()
    try:
        async with asyncio.timeout(30):
            assert host.host.dialback_timeout == 1.5
            sock = await silent_client(relay.url, host.host.address, "127.0.0.1")
            assert sock is not None
            started = time.monotonic()
            await asyncio.wait_for(sock.wait_closed(), 5)
            held = time.monotonic() - started
            assert 1.0 <= held <= 3.0, held
            assert not host.host.uplinks[relay.url]._pending
            conn = await dial(host.announced, code=host.code, timeout=10)
            try:
                assert await echo_once(conn, PAYLOAD) == PAYLOAD
            finally:
                await conn.close()
    finally:
        await host.close()


async def test_a_large_frame_before_authentication_is_refused_unbuffered(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "keywire.link.host")
    relay = relay_factory("--max-bps", "0")
    host = await EchoHost([relay.url], tmp_path / "host").start()
    try:
        async with asyncio.timeout(30):
            sock = await silent_client(relay.url, host.host.address, "127.0.0.1")
            assert sock is not None
            started = time.monotonic()
            with contextlib.suppress(Exception):
                await sock.send(os.urandom(PRE_AUTH_MAX_FRAME * 16))
            await asyncio.wait_for(sock.wait_closed(), 5)
            assert time.monotonic() - started < 3.0  # refused at once, not at the deadline
            failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
            assert any("1009" in f for f in failures), failures  # too big: never buffered
            assert not host.host.uplinks[relay.url]._pending
            conn = await dial(host.announced, code=host.code, timeout=10)
            try:
                assert await echo_once(conn, PAYLOAD) == PAYLOAD  # full frames once paired
            finally:
                await conn.close()
    finally:
        await host.close()


def test_dialback_timeout_setting_is_checked() -> None:
    assert dialback_timeout_setting(5) == 5.0
    assert dialback_timeout_setting("2.5") == 2.5
    for bad in (0, -1, "soon", True, None, float("nan")):
        with pytest.raises(ValueError, match="dialback_timeout"):
            dialback_timeout_setting(bad)
