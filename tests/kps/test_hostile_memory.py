"""Peers that write and never read (issue 18, item 6): bounded memory, returned after close.

Each hog dials the echo listener process with tiny receive windows of its own, writes 16 MiB on
one stream and never reads, so the server's echo blocks and the server holds whatever its
windows let the hog send. Without a bound every hog parks ~10.4 MiB (8 MiB connection window,
1 MiB send buffer, a stream window in flight); the listener's receive budget shares windows out
of one total, and its reclaimer gives the memory back once the hogs are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from keywire.kps import KpsConnection, KpsSettings, dial

from .test_hostile_retry import ServerProcess, echo_1mib, start_server

pytestmark = pytest.mark.timeout(90)

HOGS = 24
BUDGET = 32 << 20
MIB = 1 << 20


async def hog(server: ServerProcess, conns: list[KpsConnection]) -> None:
    conn = await dial("127.0.0.1", server.port, server.certhash,
                      KpsSettings(connection_window=65536, stream_window=65536))
    conns.append(conn)
    stream = await conn.open_stream()
    chunk = bytes(MIB)
    for _ in range(16):
        await stream.write(chunk)


async def test_non_reading_peers_hold_bounded_memory_that_is_returned() -> None:
    server = await start_server(receive_budget=BUDGET)
    conns: list[KpsConnection] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await echo_1mib(server)
        baseline = await server.stats()
        tasks = [asyncio.ensure_future(hog(server, conns)) for _ in range(HOGS)]
        # wait until the hogs have filled what the server lets them (unread stops growing)
        previous, loaded = -1, baseline
        for _ in range(40):
            await asyncio.sleep(0.5)
            loaded = await server.stats()
            if loaded["connections"] == HOGS and loaded["unread"] == previous:
                break
            previous = loaded["unread"]
        assert loaded["connections"] >= HOGS
        # a legitimate client still gets through and echoes 1 MiB while the hogs sit there
        await echo_1mib(server, timeout=30)
        loaded = await server.stats()
        for task in tasks:
            task.cancel()
        for conn in conns:
            conn.abort(0, "done")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            settled = await server.stats()
            if settled["connections"] == 0 and settled["rss"] - baseline["rss"] < 16 * MIB:
                break
        await echo_1mib(server)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        server.proc.terminate()
        _, stderr = await asyncio.wait_for(server.proc.communicate(), 10)
    grown = loaded["rss"] - baseline["rss"]
    print(f"hogs={HOGS} unread={loaded['unread'] / MIB:.1f}MiB "
          f"committed={loaded['committed'] / MIB:.1f}MiB rss+={grown / MIB:.1f}MiB "
          f"({grown / HOGS / MIB:.2f} MiB/hog) after={(settled['rss'] - baseline['rss']) / MIB:.1f}"
          f"MiB reclaims={settled['reclaims']}")
    # the windows never promise more than the budget plus a floor window per connection
    assert loaded["committed"] <= BUDGET + HOGS * (256 << 10) + 8 * MIB
    # unread bytes stop at each window, overshooting by at most the last batch of events (one
    # stream window, at most 1 MiB)
    assert loaded["unread"] <= loaded["committed"] + HOGS * MIB
    # without the budget: ~10.4 MiB per hog (250 MiB here)
    assert grown < 100 * MIB, grown
    assert settled["connections"] == 0
    assert settled["rss"] - baseline["rss"] < 16 * MIB, (baseline, settled)
    assert len(stderr) < 2000, stderr[-2000:]


def test_the_budget_gives_full_windows_first_and_never_less_than_the_floor() -> None:
    from keywire.kps.budget import ReceiveBudget

    budget = ReceiveBudget(total=32 * MIB, floor=256 << 10, ceiling=8 * MIB)
    windows = [budget.grant() for _ in range(40)]
    assert windows[:4] == [8 * MIB] * 4
    assert min(windows) == 256 << 10
    assert budget.committed <= 32 * MIB + 40 * (256 << 10)
    for window in windows:
        budget.release(window)
    assert budget.committed == 0 and budget.open == 0
    assert budget.grant() == 8 * MIB  # a quiet listener gives full windows again
