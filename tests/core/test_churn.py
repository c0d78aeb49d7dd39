"""Connection churn leaves nothing behind: every way a connection can end, on every server kind.

Each test runs a warm-up batch of one ending against one server kind, takes a baseline (the
server's own tables, open fds, asyncio tasks, RSS), runs the main batch, waits (bounded) for the
server to settle and asserts it is back at the baseline; a leak fails naming what grew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from qh3.quic.connection import QuicConnection

import keywire
from keywire.errors import ConnectionClosed, DialError, StreamError
from keywire.identity import Identity, decode_certhash
from keywire.kps import KpsConnection, KpsSettings
from keywire.kps.quic import client_configuration
from keywire.mux.connection import MuxConnection
from keywire.pipeconn import SingleStreamConnection
from keywire.stream import Connection, Stream

from .churn_util import (
    close_early,
    collected_rss_kib,
    collector_paused,
    echo,
    grown,
    process_counters,
    run_batch,
    server_tables,
    settle,
)

KINDS = {
    "kps": "kps:127.0.0.1:0",
    "net-shs-mux": "net:127.0.0.1:0~shs~mux",
    "ws-shs-mux": "ws://127.0.0.1:0~shs~mux",
    "net-noauth": "net:127.0.0.1:0~noauth",
    "unix-noauth": "unix:{tmp}/churn.sock~noauth",
}
ENDINGS = [
    "clean",
    "quick_close",
    "abort",
    "server_close",
    "reset",
    "half_handshake",
    "cancelled_dial",
    "wrong_key",
]
#: cycles of one ending measured against the baseline, after as many as warm-up
#: (KPS handshakes cost ~20 ms of CPU each)
CYCLES = {"kps": 100}
DEFAULT_CYCLES = 100
#: cycles run at once (KPS closes wait out a short closing period, so more overlap)
PARALLEL = {"kps": 20}
DEFAULT_PARALLEL = 10
#: a server's RSS may grow this much over the measured batch (allocator noise, caches)
RSS_BOUND_KIB = 20 * 1024
PAYLOAD = os.urandom(16 * 1024)
#: the small timers the abandoned endings need, so the server notices within the test
IDLE_TIMEOUT = 1.0
HANDSHAKE_TIMEOUT = 0.5


# -- the client's side ------------------------------------------------------------------------
def tear_down(conn: Connection) -> None:
    """Drop the client's transport without any orderly close (no CONNECTION_CLOSE, no GoAway)."""
    if isinstance(conn, KpsConnection):
        demux = conn._send_many.__self__  # type: ignore[attr-defined]
        demux.close()
    elif isinstance(conn, MuxConnection | SingleStreamConnection):
        conn._pipe.abort()
    else:  # pragma: no cover - a new connection type must say how to drop it
        raise AssertionError(f"cannot tear down {conn!r}")


async def wait_ended(conn: Connection, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        await conn.wait_closed()


class Client:
    """The endings, as a user of ``keywire.dial`` produces them."""

    def __init__(self, kind: str, address: str, identity: Identity) -> None:
        self.kind = kind
        self.address = address
        self.identity = identity
        self.multi_stream = not kind.endswith("noauth")
        self.dropped: list[Connection] = []
        self.options = {
            "identity": identity,
            "timeout": 10.0,
            "extra": {"kps.handshake_timeout": 5.0},
        }

    async def check_dropped(self) -> None:
        """Torn-down KPS clients end by their own idle timeout and release everything."""
        for conn in self.dropped:
            if isinstance(conn, KpsConnection):
                await wait_ended(conn, timeout=IDLE_TIMEOUT * 10)
                async with asyncio.timeout(5):
                    while not conn.finished:
                        await asyncio.sleep(0.05)
        self.dropped.clear()

    async def dial(self, address: str | None = None) -> Connection:
        return await keywire.dial(address or self.address, **self.options)  # type: ignore[arg-type]

    async def clean(self, i: int) -> None:
        conn = await self.dial()
        stream = await conn.open_stream()
        await stream.write(PAYLOAD)
        await stream.close_write()
        assert await stream.read_all() == PAYLOAD
        await conn.close()

    async def quick_close(self, i: int) -> None:
        """Close (or, on KPS, vanish) right after the handshake, before any stream."""
        conn = await self.dial()
        if isinstance(conn, KpsConnection) and i % 2 == 1:
            tear_down(conn)
            self.dropped.append(conn)
            return
        await conn.close()

    async def abort(self, i: int) -> None:
        conn = await self.dial()
        stream = await conn.open_stream()
        await stream.write(PAYLOAD)
        await stream.readexactly(1000)  # the server is mid-echo
        tear_down(conn)
        if isinstance(conn, MuxConnection):
            await wait_ended(conn)  # its reader task sees the pipe die
        else:
            # a pipe connection has no task to notice; a KPS connection without its socket
            # ends at its idle timeout (checked in ``check_dropped``)
            self.dropped.append(conn)

    async def server_close(self, i: int) -> None:
        conn = await self.dial()
        stream = await conn.open_stream()
        with contextlib.suppress(StreamError, ConnectionClosed):
            async with asyncio.timeout(10):
                while True:  # the server closes the connection under this writer
                    await stream.write(PAYLOAD)
                    await asyncio.sleep(0)
        await conn.close()

    async def reset(self, i: int) -> None:
        conn = await self.dial()
        first = await conn.open_stream()
        await first.write(PAYLOAD)
        await first.readexactly(100)
        if self.multi_stream or i % 2 == 0:
            first.reset()
        else:
            first.stop_sending()
        if self.multi_stream:
            second = await conn.open_stream()
            await second.write(PAYLOAD)
            await second.readexactly(100)
            second.stop_sending()
            await second.write(PAYLOAD)  # may or may not fail, depending on timing
        await conn.close()

    async def half_handshake(self, i: int) -> None:
        if self.kind == "kps":
            await kps_initial_then_vanish(self.address)
            return
        reader, writer = await self.raw_connect()
        step = i % 3
        if step == 1:  # a first handshake message cut short
            if self.kind.startswith("ws"):
                writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websock")
            else:
                writer.write(os.urandom(32))  # half of shs msg1 (data, for noauth)
        elif step == 2 and self.kind.startswith("ws"):
            writer.close()  # a WebSocket that opens and then never says a word of shs
            async with asyncio.timeout(10):
                await writer.wait_closed()
            await ws_open_then_drop(self.address)
            return
        if step == 2:
            writer.transport.abort()  # connect, then reset
        else:
            writer.close()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                await reader.read()
                await writer.wait_closed()

    async def cancelled_dial(self, i: int) -> None:
        """The dialer gives up at some point of its handshake (``asyncio`` cancellation)."""
        task = asyncio.ensure_future(self.dial())
        await asyncio.sleep((i % 7) * 0.001)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            conn = await task
            await conn.close()  # the handshake won the race: an ordinary close

    async def refused(self, i: int) -> None:
        """Dial where nothing listens: refused (TCP, Unix) or silent until the timeout (KPS)."""
        transport = self.address.split("~")[0]
        if transport.startswith("unix:"):
            address = self.address.replace(transport, transport + ".nobody")
        else:
            kind = socket.SOCK_DGRAM if self.kind == "kps" else socket.SOCK_STREAM
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("127.0.0.1", 0))
                free = sock.getsockname()[1]
            port = transport.split(":")[2].split("/")[0]
            address = self.address.replace(f":{port}", f":{free}", 1)
        with pytest.raises(DialError):
            await keywire.dial(
                address,
                identity=self.identity,
                timeout=5.0,
                extra={"kps.handshake_timeout": HANDSHAKE_TIMEOUT},
            )

    async def raw_connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A plain socket to the server's transport, below every keywire layer."""
        transport = self.address.split("~")[0]
        if transport.startswith("unix:"):
            return await asyncio.open_unix_connection(transport[len("unix:") :])
        port = int(transport.rsplit(":", 1)[1].split("/")[0])
        return await asyncio.open_connection("127.0.0.1", port)

    async def wrong_key(self, i: int) -> None:
        other = Identity.generate() if i % 10 == 0 else WRONG
        if self.kind == "kps":
            address = self.address.replace(self.address.rsplit(":", 1)[1], other.certhash)
        elif self.kind.endswith("noauth"):  # no key to get wrong: speak shs to a noauth server
            address = self.address.replace("~noauth", f"~shs:{other.shs_id}")
        else:
            key = self.address.split("~shs:", 1)[1].split("~", 1)[0]
            address = self.address.replace(key, other.shs_id)
        assert address != self.address
        with pytest.raises(DialError):
            conn = await self.dial(address)
            await conn.close()


WRONG = Identity.generate()


async def ws_open_then_drop(address: str) -> None:
    from websockets.asyncio.client import connect

    url = address.split("~")[0]
    ws = await connect(url)
    ws.transport.abort()
    async with asyncio.timeout(10):
        await ws.wait_closed()


async def kps_initial_then_vanish(address: str) -> None:
    """A real client's valid Initial, and nothing more."""
    _, _, port_text, certhash = address.split(":")
    port = int(port_text)
    loop = asyncio.get_running_loop()
    quic = QuicConnection(
        configuration=client_configuration(decode_certhash(certhash), KpsSettings())
    )
    quic.connect(("127.0.0.1", port), loop.time())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data, _ in quic.datagrams_to_send(loop.time()):
            sock.sendto(data, ("127.0.0.1", port))
        await asyncio.sleep(0.01)  # the server's answer arrives at a socket that then goes


# -- the tests --------------------------------------------------------------------------------
def server_options(kind: str, ending: str, identity: Identity) -> dict[str, Any]:
    extra: dict[str, object] = {}
    if kind == "kps" and ending in ("abort", "quick_close", "half_handshake", "cancelled_dial"):
        extra["kps.idle_timeout"] = IDLE_TIMEOUT  # a vanished client is found by its timeout
        extra["kps.handshake_timeout"] = HANDSHAKE_TIMEOUT
    return {
        "identity": identity,
        "handshake_timeout": HANDSHAKE_TIMEOUT,
        "extra": extra,
        "handler": close_early if ending == "server_close" else echo,
    }


@pytest.mark.timeout(45)
@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("kind", list(KINDS))
async def test_churn_returns_the_server_to_its_baseline(
    kind: str, ending: str, tmp_path: Path
) -> None:
    identity = Identity.generate()
    before_server = process_counters()
    spec = KINDS[kind].format(tmp=tmp_path)
    async with keywire.Server([spec], **server_options(kind, ending, identity)) as server:
        client = Client(kind, server.address(), Identity.generate())
        cycle: Callable[[int], Awaitable[None]] = getattr(client, ending)

        def probe() -> dict[str, int]:
            return {**server_tables(server), **process_counters()}

        # the warm-up is the same batch as the measured one, with the collector paused as it
        # is there: it reaches the same high-water marks (allocator arenas, qh3's native
        # buffers, which are freed only when their cyclic garbage is collected), so what grows
        # after it is a leak
        count = CYCLES.get(kind, DEFAULT_CYCLES)
        parallel = PARALLEL.get(kind, DEFAULT_PARALLEL)
        with collector_paused():
            await run_batch(cycle, 0, count, parallel)
            await client.check_dropped()
        empty = {name: 0 for name in server_tables(server)}
        assert not await settle(lambda: server_tables(server), empty, 10.0), "warm-up"
        await asyncio.sleep(0.1)
        rss_before = collected_rss_kib()
        baseline = probe()

        with collector_paused():
            await run_batch(cycle, count, count, parallel)
            await client.check_dropped()
            over = await settle(probe, baseline, 10.0)
        assert not over, f"{kind}/{ending}: after {count} cycles these grew: {over}"
        rss_growth = collected_rss_kib() - rss_before
        print(f"churn server {kind}/{ending}: {count} cycles, RSS {rss_growth:+} KiB")
        assert rss_growth < RSS_BOUND_KIB, (
            f"{kind}/{ending}: RSS grew by {rss_growth} KiB over {count} cycles"
        )
        if ending != "server_close":  # and the server still serves
            await Client(kind, server.address(), Identity.generate()).clean(0)
    # a closed server holds nothing at all
    assert not grown({}, server_tables(server)), server_tables(server)
    over = await settle(process_counters, before_server, 5.0)
    assert not over, f"{kind}/{ending}: after the server closed these stayed: {over}"


@pytest.mark.timeout(45)
@pytest.mark.parametrize("kind", list(KINDS))
async def test_closing_the_server_mid_churn_releases_everything(kind: str, tmp_path: Path) -> None:
    """Shutdown with connections mid-stream and mid-handshake: nothing outlives the server."""
    before = process_counters()
    server = keywire.Server(
        [KINDS[kind].format(tmp=tmp_path)],
        **server_options(kind, "half_handshake", Identity.generate()),
    )
    await server.start()
    client = Client(kind, server.address(), Identity.generate())
    conns: list[Connection] = []
    streams: list[Stream] = []
    raw: list[asyncio.StreamWriter] = []
    try:
        for _ in range(10):
            conn = await client.dial()
            conns.append(conn)
            stream = await conn.open_stream()
            streams.append(stream)
            await stream.write(PAYLOAD)
            await stream.readexactly(100)
        for _ in range(5):  # handshakes the server is still waiting on
            if kind == "kps":
                await kps_initial_then_vanish(client.address)
            else:
                raw.append((await client.raw_connect())[1])
        # (let asyncio finish accepting them: CPython 3.12 leaks a socket accepted in the same
        # loop iteration as Server.close(), until the garbage collector closes it)
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.close(grace=2.0)
        assert loop.time() - started < 5
        assert not grown({}, server_tables(server)), server_tables(server)
        for conn, stream in zip(conns, streams, strict=True):  # every client hears of it
            if isinstance(conn, SingleStreamConnection):  # (a pipe's end shows in a read)
                with contextlib.suppress(StreamError):
                    async with asyncio.timeout(5):
                        while await stream.read():
                            pass
            else:
                await wait_ended(conn, 5)
    finally:
        for conn in conns:
            await conn.close()
        for writer in raw:
            writer.transport.abort()
    over = await settle(process_counters, before, 5.0)
    assert not over, f"{kind}: after the server closed these stayed: {over}"


@pytest.mark.timeout(30)
async def test_closing_the_server_drops_a_peer_that_never_reads() -> None:
    """The orderly close cannot flush to a peer that does not read: the socket goes anyway."""

    async def flood(conn: Connection) -> None:
        stream = await conn.accept_stream()
        while True:
            await stream.write(PAYLOAD * 64)

    before = process_counters()
    server = keywire.Server(["net:127.0.0.1:0~noauth"], handler=flood)
    await server.start()
    client = Client("net-noauth", server.address(), Identity.generate())
    _reader, writer = await client.raw_connect()  # connects and never reads
    try:
        writer.write(b"x")
        async with asyncio.timeout(10):
            while not server._connections:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the server's buffers fill up
        await server.close(grace=0.5)
        over = await settle(process_counters, {**before, "open fds": before["open fds"] + 1}, 5.0)
        assert not over, f"the server kept the socket of a peer that does not read: {over}"
    finally:
        writer.transport.abort()


# -- the dialing side alone -------------------------------------------------------------------
@pytest.fixture
async def remote_servers() -> AsyncIterator[dict[str, dict[str, str]]]:
    """Servers of every kind in a child process (``churn_server``): this process only dials."""
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.core.churn_server",
        cwd=root,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, "the churn server did not start"
        yield json.loads(line)
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


CLIENT_ENDINGS = [
    "clean",
    "quick_close",
    "abort",
    "reset",
    "cancelled_dial",
    "wrong_key",
    "refused",
]
CLIENT_CYCLES = 40


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(KINDS))
async def test_churn_leaves_the_dialer_holding_nothing(
    kind: str, remote_servers: dict[str, dict[str, str]]
) -> None:
    identity = Identity.generate()
    client = Client(kind, remote_servers["echo"][kind], identity)
    closing = Client(kind, remote_servers["close_early"][kind], identity)
    cycles = [getattr(client, ending) for ending in CLIENT_ENDINGS] + [closing.server_close]

    async def churn(start: int, count: int) -> None:
        for cycle in cycles:
            await run_batch(cycle, start, count, PARALLEL.get(kind, DEFAULT_PARALLEL))
        await client.check_dropped()

    with collector_paused():  # the same conditions as the measured batch (see above)
        await churn(0, CLIENT_CYCLES)
    await asyncio.sleep(0.2)
    rss_before = collected_rss_kib()
    baseline = process_counters()
    with collector_paused():
        await churn(CLIENT_CYCLES, CLIENT_CYCLES)
        over = await settle(process_counters, baseline, 10.0)
    assert not over, (
        f"{kind}: the dialer kept these after {CLIENT_CYCLES} cycles of "
        f"{len(cycles)} endings: {over}"
    )
    rss_growth = collected_rss_kib() - rss_before
    print(f"churn dialer {kind}: {CLIENT_CYCLES} x {len(cycles)} cycles, RSS {rss_growth:+} KiB")
    assert rss_growth < RSS_BOUND_KIB, f"{kind}: the dialer's RSS grew by {rss_growth} KiB"
