"""The idle-stall attack at production sizes (issue 18, item 4): the host's dial-back cap at
its default (``MAX_DIALBACKS`` = 64), 96 silent clients from 12 sources, and the relay at its
default per-IP upgrade share (32). A paired client still reconnects and echoes 1 MiB
byte-exact during and after the attack, and the host's burst of dial-backs from its one IP is
not refused by the relay's per-IP share: dial-backs that carry their ticket count against the
host, not the IP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keywire.link.host import MAX_DIALBACKS
from tests.core.flood import fd_count, sources

from .conftest import SRC
from .helpers import EchoHost, dial, echo_once
from .test_dos_dialback import attacker

pytestmark = pytest.mark.timeout(150)
PAYLOAD = os.urandom(1 << 20)
SILENT = 96


class Relay:
    """A relay process whose log goes to a file: a pipe nobody reads fills at 64 KiB and then
    blocks the relay's every write (the stall first seen in this test was that)."""

    def __init__(self, log: Path, *flags: str) -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "keywire.link.relay",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    *flags,
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        assert self.url.startswith("ws://"), log.read_text()

    def logs(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    started = Relay(tmp_path / "relay.log", "--max-bps", "0")  # production admission limits
    yield started
    started.stop()


async def test_96_silent_clients_against_the_production_cap(relay: Relay, tmp_path: Path) -> None:
    host = await EchoHost([relay.url], tmp_path / "host").start()
    uplink = host.host.uplinks[relay.url]
    assert uplink.max_dialbacks == MAX_DIALBACKS == 64
    stop = asyncio.Event()
    attackers: list[asyncio.Task[int]] = []
    try:
        async with asyncio.timeout(130):
            first = await dial(host.announced, code=host.code, timeout=10)
            assert await echo_once(first, PAYLOAD) == PAYLOAD
            await asyncio.sleep(0.5)
            base = fd_count()
            # 12 sources × 8 (the relay's waiting share per IP) = 96 silent clients at once
            for source in sources(12, "127.0.7."):
                for _ in range(8):
                    attackers.append(
                        asyncio.create_task(attacker(relay.url, host.host.address, source, stop))
                    )
            deadline = time.monotonic() + 40
            while uplink.dialbacks_dropped < 16 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert uplink.dialbacks_dropped >= 16, "the attack never filled the host's cap"
            assert len(uplink._pending) <= MAX_DIALBACKS
            timings = []
            for _ in range(3):  # a paired client reconnects and echoes during the attack
                started = time.monotonic()
                conn = await dial(host.announced, timeout=15)
                try:
                    assert await echo_once(conn, PAYLOAD) == PAYLOAD
                finally:
                    await conn.close()
                timings.append(time.monotonic() - started)
            dropped_during = uplink.dialbacks_dropped
            assert await echo_once(first, PAYLOAD) == PAYLOAD  # the established session held
            stop.set()
            spliced = sum(await asyncio.gather(*attackers))
            assert spliced > MAX_DIALBACKS
            await first.close()
            print(f"dropped {dropped_during}, spliced {spliced}, echo s {timings}")
            await asyncio.sleep(2.0)
            assert not uplink._pending
            assert fd_count() <= base + 10, (fd_count(), base)
            conn = await dial(host.announced, timeout=10)  # and after the attack
            try:
                assert await echo_once(conn, PAYLOAD) == PAYLOAD
            finally:
                await conn.close()
        logs = relay.logs()
        # the host's own dial-backs were never refused for its IP's upgrade share
        assert "max_upgrading_per_ip" not in logs, logs[-2000:]
        assert len(logs) < 200_000
    finally:
        stop.set()
        for task in attackers:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*attackers, return_exceptions=True)
        await host.close()
