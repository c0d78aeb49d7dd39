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
    conn = await dial(
        "127.0.0.1",
        server.port,
        server.certhash,
        KpsSettings(connection_window=65536, stream_window=65536),
    )
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
    print(
        f"hogs={HOGS} unread={loaded['unread'] / MIB:.1f}MiB "
        f"committed={loaded['committed'] / MIB:.1f}MiB rss+={grown / MIB:.1f}MiB "
        f"({grown / HOGS / MIB:.2f} MiB/hog) after={(settled['rss'] - baseline['rss']) / MIB:.1f}"
        f"MiB reclaims={settled['reclaims']}"
    )
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


async def test_a_finished_connection_is_freed_without_the_cyclic_collector() -> None:
    """A server write blocked on a peer that never reads fails when the peer aborts; the
    connection, its stream and the data being written are then freed by reference counting
    alone (no stored error keeps a traceback, no table keeps the streams)."""
    import gc
    import weakref

    from keywire.errors import ConnectionClosed, StreamError

    from .helpers import listening

    refs: list[weakref.ref[object]] = []
    ended = asyncio.Event()

    async def handler(conn: KpsConnection) -> None:
        refs.append(weakref.ref(conn))
        try:
            stream = await conn.accept_stream()
            refs.append(weakref.ref(stream))
            block = await stream.read(1024) * 1024
            while True:
                await stream.write(block)
        except (StreamError, ConnectionClosed):
            pass
        for _ in range(2):  # raise the stored close error more than once
            with contextlib.suppress(ConnectionClosed):
                await conn.accept_stream()
        ended.set()

    gc.collect()
    gc.disable()
    try:
        async with listening(handler) as listener, asyncio.timeout(20):
            client = await dial(
                "127.0.0.1",
                listener.port,
                listener.identity.certhash,
                KpsSettings(connection_window=65536, stream_window=65536),
            )
            stream = await client.open_stream()
            await stream.write(b"x" * 1024)
            await asyncio.sleep(0.5)  # the server's write now waits for a reader
            client.abort(0, "gone")
            await ended.wait()
            for _ in range(50):
                await asyncio.sleep(0.05)
                if all(ref() is None for ref in refs):
                    break
            alive = [ref() for ref in refs if ref() is not None]
            assert len(refs) == 2 and not alive, [type(x) for x in alive]
    finally:
        gc.enable()


async def test_the_send_budget_bounds_a_connection_however_many_streams_write() -> None:
    """The server writes 4 MiB on each of 8 streams to a peer that reads none of them: per
    stream ``kps.send_buffer`` (1 MiB) would queue 8 MiB; ``kps.connection_send_buffer``
    (here 2 MiB) bounds the connection, and the writes fail promptly when the peer aborts."""
    from keywire.errors import StreamError

    from .helpers import Collector, listening

    collector = Collector()
    budget = 2 * MIB
    async with listening(collector, connection_send_buffer=budget) as listener, asyncio.timeout(30):
        client = await dial(
            "127.0.0.1",
            listener.port,
            listener.identity.certhash,
            KpsSettings(connection_window=65536, stream_window=65536),
        )
        for _ in range(8):
            await (await client.open_stream()).write(b"?")
        server = await collector.first()
        streams = [await server.accept_stream() for _ in range(8)]
        writers = [asyncio.ensure_future(s.write(bytes(4 * MIB))) for s in streams]
        await asyncio.sleep(1.0)
        queued = server.session.send_buffered_total()
        assert all(not w.done() for w in writers)
        # (the check runs before a write, so one write may overshoot by its chunk)
        assert budget // 2 <= queued <= budget + MIB, queued
        client.abort(0, "gone")
        results = await asyncio.gather(*writers, return_exceptions=True)
        assert all(isinstance(r, StreamError) for r in results), results
    print(f"queued={queued / MIB:.2f} MiB on 8 streams (budget {budget / MIB:.0f} MiB)")
