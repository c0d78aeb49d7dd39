"""Interop with the reference yamux: hashicorp/yamux in Go (Debian's packaged source).

A small Go program (tests/mux/go/yamux_peer.go) is built once per test session and run as an
echo server or a client. It shows that keywire's frames, windows (including a larger window
announced in SYN/ACK), FIN, pings, GoAway codes, plain-RST handling and the STOP_SENDING window
slack all work with a peer that knows nothing of keywire's extensions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from keywire.errors import Code, StreamError
from keywire.mux.connection import MuxConnection
from keywire.pipe import StreamPipe

from .test_tcp import serve_echo

pytestmark = pytest.mark.timeout(30)

SOURCE = Path(__file__).resolve().parent / "go" / "yamux_peer.go"
GOPATH = Path("/usr/share/gocode")
YAMUX_SOURCE = GOPATH / "src" / "github.com" / "hashicorp" / "yamux"


@pytest.fixture(scope="session")
def go_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built Go peer; fails (not skips) when Go or hashicorp/yamux is not installed."""
    go = shutil.which("go")
    if go is None or not YAMUX_SOURCE.is_dir():
        pytest.fail(
            "the yamux interop tests need Debian's golang-go and "
            "golang-github-hashicorp-yamux-dev (apt-get install them)"
        )
    out = tmp_path_factory.mktemp("go") / "yamux_peer"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(out.parent / "cache"),
        "GOFLAGS": "",
    }
    subprocess.run(
        [go, "build", "-o", str(out), str(SOURCE)],
        check=True,
        env=env,
        timeout=120,
        capture_output=True,
    )
    return out


def pattern(stream_id: int, size: int) -> bytes:
    """The bytes stream ``stream_id`` carries (same formula as yamux_peer.go)."""
    base = bytes((i * 31 + stream_id * 7) & 0xFF for i in range(256))
    return (base * (size // 256 + 1))[:size]


class GoPeer:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def line(self, timeout: float = 10) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"the Go peer exited; it said: {self.lines}")
        obj: dict[str, Any] = json.loads(raw)
        self.lines.append(obj)
        return obj

    async def until(self, key: str, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                obj = await self.line(timeout)
                if key in obj or obj.get("event") == key:
                    return obj


@contextlib.asynccontextmanager
async def run_go(binary: Path, *args: str, **env: str) -> AsyncIterator[GoPeer]:
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        yield GoPeer(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def dial(port: int) -> MuxConnection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return MuxConnection(StreamPipe(reader, writer), client=True)


async def test_keywire_client_with_a_go_echo_server(go_peer: Path) -> None:
    async with run_go(go_peer, "server") as peer:
        conn = await dial((await peer.line())["port"])
        sizes = [0, 1, 100, 4096, 65_536, 262_144, 262_145, 2_000_000] * 3

        async def exchange(size: int) -> bool:
            stream = await conn.open_stream()
            data = pattern(stream.id, size)

            async def send() -> None:
                await stream.write(data)
                await stream.close_write()  # the Go echo ends its copy at our FIN and FINs back

            sender = asyncio.create_task(send())
            echoed = await stream.read_all()
            await sender
            return echoed == data

        async with asyncio.timeout(25):
            assert all(await asyncio.gather(*(exchange(s) for s in sizes)))
        assert conn.session.rtt is not None  # the Go side answered the round-trip probe
        assert conn.session.stream_count == 0  # every stream ended on both sides
        await conn.close()
        closed = await peer.until("session-closed")
        assert "error" in closed
        assert not [line for line in peer.lines if line.get("event") == "stream-error"]


async def test_go_client_with_a_keywire_echo_server(go_peer: Path) -> None:
    accepted: asyncio.Future[MuxConnection] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(MuxConnection(StreamPipe(reader, writer), client=False))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # a 1 MiB Go window: its SYNs carry a 768 KiB delta keywire must apply
        async with run_go(
            go_peer,
            "client",
            str(port),
            "30",
            "700000",
            KW_KEEPALIVE_MS="50",
            KW_WRITE_TIMEOUT_MS="2000",
            KW_WINDOW=str(1 << 20),
        ) as peer:
            conn = await asyncio.wait_for(accepted, 10)
            echo = asyncio.create_task(serve_echo(conn))
            result = await peer.until("done", 25)
            assert result == {"done": 30, "failed": 0, "ping_ok": True}
            # the Go client sends GoAway(normal) and closes: a clean close by the peer
            closed = await asyncio.wait_for(conn.wait_closed(), 10)
            assert closed.code == Code.NONE and closed.remote
            echo.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await echo
    finally:
        server.close()


async def test_go_keepalive_pings_are_answered(go_peer: Path) -> None:
    async with run_go(go_peer, "server", KW_KEEPALIVE_MS="20", KW_WRITE_TIMEOUT_MS="300") as peer:
        conn = await dial((await peer.line())["port"])
        await asyncio.sleep(1.0)  # ~50 pings, each of which had to be answered within 300 ms
        stream = await conn.open_stream()
        await stream.write(b"still alive")
        await stream.close_write()
        assert await asyncio.wait_for(stream.read_all(), 10) == b"still alive"
        assert not conn.closed
        await conn.close()


async def test_a_plain_rst_refusal_kills_both_halves_with_reset(go_peer: Path) -> None:
    async with run_go(go_peer, "server", KW_BACKLOG="2", KW_NO_ACCEPT="1") as peer:
        conn = await dial((await peer.line())["port"])
        streams = [await conn.open_stream() for _ in range(3)]
        await streams[2].write(b"hello")
        with pytest.raises(StreamError) as info:
            await asyncio.wait_for(streams[2].read(), 10)
        assert info.value.code == Code.RESET and info.value.remote
        with pytest.raises(StreamError) as write_info:
            await streams[2].write(b"more")
        assert write_info.value.code == Code.RESET
        assert not conn.closed
        await conn.close()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (Code.PROTOCOL_ERROR, "yamux protocol error"),
        (Code.INTERNAL_ERROR, "remote yamux internal error"),
        (Code.TIMEOUT, "unexpected go away received"),
    ],
)
async def test_go_away_codes_as_hashicorp_reads_them(
    go_peer: Path, code: int, message: str
) -> None:
    async with run_go(go_peer, "server") as peer:
        conn = await dial((await peer.line())["port"])
        await conn.close(code)
        closed = await peer.until("session-closed")
        assert closed["error"] == message


async def test_our_coded_reset_is_a_reset_for_hashicorp(go_peer: Path) -> None:
    async with run_go(go_peer, "server") as peer:
        conn = await dial((await peer.line())["port"])
        stream = await conn.open_stream()
        await stream.write(b"abc")
        assert await asyncio.wait_for(stream.readexactly(3), 10) == b"abc"
        stream.reset(Code.CANCELLED)
        event = await peer.until("stream-error")
        assert event["error"] == "connection reset"
        other = await conn.open_stream()  # the session lives on
        await other.write(b"after reset")
        await other.close_write()
        assert await asyncio.wait_for(other.read_all(), 10) == b"after reset"
        await conn.close()


async def test_stop_sending_to_a_plain_peer_stays_within_the_window(go_peer: Path) -> None:
    """hashicorp ignores STOP_SENDING and adds its length to its send window: we allow it."""
    async with run_go(go_peer, "server") as peer:
        conn = await dial((await peer.line())["port"])
        stream = await conn.open_stream()
        writer = asyncio.create_task(stream.write(os.urandom(600_000)))
        await asyncio.sleep(0.5)  # the echo fills our 256 KiB window and blocks
        window = conn.session.config.window
        assert conn.session.send_window(stream.id) < window
        stream.stop_sending(Code.CANCELLED)  # Go's window grows by 0x101 and it sends on
        await asyncio.sleep(0.5)
        assert not conn.closed  # the extra 257 bytes were within the widened window
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, StreamError):
            await writer
        stream.reset(Code.CANCELLED)
        other = await conn.open_stream()
        await other.write(b"fine")
        await other.close_write()
        assert await asyncio.wait_for(other.read_all(), 10) == b"fine"
        await conn.close()
