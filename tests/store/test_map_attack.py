"""Map server under a hostile client (issue 18, item 5), as real processes on loopback.

The attacker connects from 127.0.0.2, the legitimate streams from 127.0.0.1 (Linux routes
all of 127/8 to loopback). 1,030 PUTs that announce a body and never send it, and heads that
never end, must not keep a legitimate store stream from completing during the attack; with a
token, unauthenticated PUTs are refused before their body; every attacker connection is
closed within the head/body deadlines, and the server's stderr stays small.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import keywire
from keywire.options import Options
from keywire.store import format_secret, generate_secret
from keywire.store.mapserver.mapserver import BODY_TIMEOUT, HEAD_TIMEOUT, REFUSED_BODY_TIMEOUT

from .conftest import random_bytes

SRC = Path(__file__).resolve().parents[2] / "src"
ATTACKER = "127.0.0.2"
ATTACKS = 1030
TOKEN = "s3cret-map-token"


class MapProcess:
    def __init__(self, tmp: Path, token: bool) -> None:
        self.stderr_path = tmp / "map.err"
        args = [sys.executable, "-m", "keywire", "map-server", "--port", "0"]
        env = dict(os.environ, PYTHONPATH=str(SRC))
        env.pop("KEYWIRE_MAP_TOKEN", None)
        if token:
            (tmp / "token").write_text(TOKEN)
            args += ["--token-file", str(tmp / "token")]
        self._err = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._err, env=env)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


@pytest.fixture
def open_map(tmp_path: Path) -> Iterator[MapProcess]:
    server = MapProcess(tmp_path, token=False)
    yield server
    server.stop()


@pytest.fixture
def token_map(tmp_path: Path) -> Iterator[MapProcess]:
    server = MapProcess(tmp_path, token=True)
    yield server
    server.stop()


async def _attack(
    port: int, count: int, kind: str
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` connections from the attacker's address, each starting a request it never
    finishes: ``body`` announces 60,000 bytes and sends none, ``head`` never ends its head."""
    conns = []
    for i in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
        if kind == "body":
            writer.write(
                f"PUT /v1/{i:064x} HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n".encode()
            )
        else:
            writer.write(b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        conns.append((reader, writer))
    return conns


async def _watch(
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], within: float
) -> list[tuple[bytes, float]]:
    """What the server said on each connection and when (seconds from now) it closed it; every
    one must be closed within ``within`` seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one(reader: asyncio.StreamReader) -> tuple[bytes, float]:
        try:
            said = await reader.read()
        except OSError:  # a reset: the server closed with our unread request pending
            said = b""
        return said, loop.time() - started

    try:
        async with asyncio.timeout(within):
            return await asyncio.gather(*(one(r) for r, _ in conns))
    finally:
        for _, writer in conns:
            writer.close()


async def _legit_echo(url: str, token: str | None, size: int = 1 << 20) -> float:
    extra: dict[str, object] = {"store.linger": 5.0}
    if token:
        extra["store.token"] = token
    options = Options(timeout=10.0, extra=extra)
    spec = f"{url}~stream:{format_secret(generate_secret())}"
    payload = random_bytes(size, 9)
    started = time.monotonic()
    async with keywire.Server([spec], options) as server:

        async def serve() -> None:
            conn = await server.accept()
            stream = await conn.accept_stream()
            while data := await stream.read(1 << 16):
                await stream.write(data)
            await stream.close_write()
            await conn.close()

        serving = asyncio.ensure_future(serve())
        try:
            conn = await keywire.dial(spec, options)
            stream = await conn.open_stream()

            async def send() -> None:
                await stream.write(payload)
                await stream.close_write()

            _, echoed = await asyncio.gather(send(), stream.read_all())
            assert echoed == payload
            await conn.close()
            await serving
        finally:
            serving.cancel()
    return time.monotonic() - started


async def test_bodyless_puts_and_endless_heads_do_not_lock_out_a_stream(
    open_map: MapProcess,
) -> None:
    async with asyncio.timeout(60):
        conns = await _attack(open_map.port, ATTACKS, "body")
        conns += await _attack(open_map.port, 200, "head")
        deadline = max(BODY_TIMEOUT, HEAD_TIMEOUT) + 5
        watching = asyncio.ensure_future(_watch(conns, deadline))
        took = await _legit_echo(open_map.url, None)
        assert took < 20, took
        said = await watching
    # beyond the per-address share the server refuses at once; the share is dropped at the
    # body and head deadlines
    quick = sum(1 for _, when in said if when < 3.0)
    assert quick >= ATTACKS + 200 - 256, quick
    assert max(when for _, when in said) < deadline
    assert open_map.proc.poll() is None
    # and afterwards, still serving
    assert await _legit_echo(open_map.url, None) < 20
    assert open_map.stderr_path.stat().st_size < 4096, open_map.stderr_path.read_text()[-2000:]


async def test_unauthenticated_puts_are_refused_before_their_body(token_map: MapProcess) -> None:
    async with asyncio.timeout(60):
        conns = await _attack(token_map.port, ATTACKS, "body")
        watching = asyncio.ensure_future(_watch(conns, REFUSED_BODY_TIMEOUT + 5))
        took = await _legit_echo(token_map.url, TOKEN)
        assert took < 20, took
        said = await watching
    # refused with 401 after the short body wait (or reset beyond the per-address share)
    assert sum(1 for text, _ in said if text.startswith(b"HTTP/1.1 401")) >= 200
    assert not [
        text for text, _ in said if text and not text.startswith((b"HTTP/1.1 401", b"HTTP/1.1 503"))
    ]
    assert max(when for _, when in said) < REFUSED_BODY_TIMEOUT + 5
    assert token_map.stderr_path.stat().st_size < 4096
