"""In the NAT lab: a stream opened on the direct path keeps flowing when that path is cut (the
client's router starts dropping all UDP): it continues over the relay, byte-exact both ways,
FIN included, and the relay's counters show the rest went through it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from keywire.nat.linkconn import PathConnection
from keywire.nat.resumeio import ResumableStream
from keywire.stream import Stream

from ..link.helpers import EchoHost
from .lab import Lab
from .test_link_direct import _setup, _stats, _wait_path

MIB = 1 << 20
EXTRA: dict[str, object] = {"link.direct_exchanges": "1", "link.direct_idle": "2"}


@dataclass
class Progress:
    """What one side read: its sha256, and the longest pause between two reads."""

    digest: str = ""
    got: int = 0
    longest_gap: float = 0.0
    gap_at: int = 0
    reads: list[float] = field(default_factory=list)


async def _both_ways(stream: Stream, payload: bytes, progress: Progress) -> None:
    """Write ``payload`` and FIN while reading to EOF, noting the gaps between reads."""

    async def send() -> None:
        for start in range(0, len(payload), 64 << 10):
            await stream.write(payload[start : start + (64 << 10)])
        await stream.close_write()

    sender = asyncio.ensure_future(send())
    digest = hashlib.sha256()
    last = time.monotonic()
    while chunk := await stream.read():
        now = time.monotonic()
        if now - last > progress.longest_gap:
            progress.longest_gap, progress.gap_at = now - last, progress.got
        last = now
        digest.update(chunk)
        progress.got += len(chunk)
    await sender
    progress.digest = digest.hexdigest()


class TwoWayHost(EchoHost):
    """Each stream: send ``payload`` while reading everything; the results by stream."""

    payload: bytes = b""
    results: list[Progress | BaseException]

    async def _echo(self, stream: Stream) -> None:  # type: ignore[override]
        if not hasattr(self, "results"):
            self.results = []
        progress = Progress()
        try:
            await _both_ways(stream, self.payload, progress)
            self.results.append(progress)
        except Exception as exc:
            self.results.append(exc)


class ShaHost(EchoHost):
    """Each stream: read everything, answer with its sha256 and FIN."""

    async def _echo(self, stream: Stream) -> None:  # type: ignore[override]
        data = await stream.read_all()
        await stream.write(hashlib.sha256(data).hexdigest().encode())
        await stream.close_write()


async def _host_results(host: TwoWayHost, n: int) -> list[Progress | BaseException]:
    async with asyncio.timeout(30):
        while len(getattr(host, "results", [])) < n:
            await asyncio.sleep(0.05)
    return host.results


def test_a_cut_mid_transfer_continues_over_the_relay(lab: Lab, tmp_path: Path) -> None:
    size = 16 * MIB
    up, down = os.urandom(size), os.urandom(size)
    setup = _setup(lab, tmp_path, "full-cone", "eim-apdf", EXTRA, TwoWayHost)
    assert isinstance(setup.host, TwoWayHost)
    setup.host.payload = down

    async def start() -> tuple[PathConnection, Stream]:
        conn = await setup.dial()
        await _wait_path(conn, "direct", 15)
        stream = await conn.open_stream()
        assert isinstance(stream, ResumableStream)
        return conn, stream

    conn, stream = setup.c_loop.run(start(), timeout=30)
    progress = Progress()
    began = time.monotonic()
    running = asyncio.run_coroutine_threadsafe(_both_ways(stream, up, progress), setup.c_loop.loop)
    deadline = time.monotonic() + 30
    while progress.got < 2 * MIB and time.monotonic() < deadline and not running.done():
        time.sleep(0.005)
    assert progress.got >= 2 * MIB and not running.done(), "too fast or too slow to cut"
    before = setup.inet.run(_stats())
    cut_at, cut_got = time.monotonic() - began, progress.got
    lab.block_udp(lab.peers["c"])
    concurrent.futures.wait([running], 90)
    running.result(0)
    took = time.monotonic() - began
    relayed = setup.inet.run(_stats()) - before
    print(
        f"cut at {cut_at:.2f} s after {cut_got / MIB:.1f} MiB received; all done after "
        f"{took:.2f} s; longest stall {progress.longest_gap * 1000:.0f} ms "
        f"(at {progress.gap_at / MIB:.1f} MiB); relay carried {relayed / MIB:.1f} MiB since"
    )
    assert progress.digest == hashlib.sha256(down).hexdigest()
    (theirs,) = setup.h_loop.run(_host_results(setup.host, 1), timeout=40)
    assert isinstance(theirs, Progress), theirs
    assert theirs.digest == hashlib.sha256(up).hexdigest()
    assert stream.relayed  # type: ignore[attr-defined]
    # what the client read after the stall came over the relay, and the host's share too
    assert progress.longest_gap > 1.0  # the idle detection (link.direct_idle = 2 s)
    assert relayed >= size - progress.gap_at, (relayed, progress.gap_at)
    assert not conn.closed and conn.path == "relay"
    setup.c_loop.run(conn.close(), timeout=15)
    setup.h_loop.run(setup.host.close(), timeout=15)


def test_bytes_and_fin_written_after_the_cut_arrive_over_the_relay(
    lab: Lab, tmp_path: Path
) -> None:
    """Written (FIN too) into a path already cut but not yet known dead: nothing acknowledged
    them, so the resume sends them all again."""
    payload = os.urandom(MIB)
    setup = _setup(lab, tmp_path, "full-cone", "eim-apdf", EXTRA, ShaHost)

    async def start() -> tuple[PathConnection, Stream]:
        conn = await setup.dial()
        await _wait_path(conn, "direct", 15)
        stream = await conn.open_stream()
        await stream.write(b"hello ")
        await asyncio.sleep(0.3)  # the header and the first bytes are over
        return conn, stream

    conn, stream = setup.c_loop.run(start(), timeout=30)
    lab.block_udp(lab.peers["c"])

    async def finish() -> tuple[bytes, float]:
        started = time.monotonic()
        await stream.write(payload)
        await stream.close_write()
        assert isinstance(stream, ResumableStream) and not stream.relayed
        assert stream.state.fin_written and not stream.state.fin_acked
        answer = await stream.read_all()
        return answer, time.monotonic() - started

    answer, seconds = setup.c_loop.run(finish(), timeout=40)
    print(f"answer over the relay {seconds * 1000:.0f} ms after the writes")
    assert answer == hashlib.sha256(b"hello " + payload).hexdigest().encode()
    assert conn.path == "relay"
    setup.c_loop.run(conn.close(), timeout=15)
    setup.h_loop.run(setup.host.close(), timeout=15)
