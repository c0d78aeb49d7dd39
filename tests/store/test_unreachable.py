"""A store that is down, silent or full fails a dial or a listen within its timeout, with an
error naming the store (issue 18, item 3), and a stream whose store fills up fails with one
instead of hanging."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

import keywire
from keywire.errors import DialError, StreamError
from keywire.options import Options
from keywire.registry import registry
from keywire.store import (
    HttpStore,
    MapServer,
    StoreFull,
    backendops,
    format_secret,
    generate_secret,
)

from .conftest import RedisProcess, free_port, random_bytes

SECRET = format_secret(generate_secret())


@pytest.fixture(autouse=True)
def _plugins_loaded() -> None:
    """Import every plugin before a clock starts (the first dial of a process loads them)."""
    registry.load()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


@pytest.mark.parametrize("scheme", ["redis", "http"])
async def test_dial_to_a_store_that_is_down_fails_fast(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}" + ("/0" if scheme == "redis" else "")
    started = time.monotonic()
    with pytest.raises(DialError) as caught:
        await keywire.dial(f"{url}~stream:{SECRET}", timeout=3.0)
    assert time.monotonic() - started < 3.5
    text = str(caught.value)
    assert ("redis" if scheme == "redis" else "map server") in text
    assert "refused" in text.lower() or "connect" in text.lower(), text


@pytest.mark.parametrize("scheme", ["redis", "http"])
async def test_dial_to_a_silent_store_fails_within_its_timeout(
    scheme: str, silent_port: int
) -> None:
    url = f"{scheme}://127.0.0.1:{silent_port}" + ("/0" if scheme == "redis" else "")
    started = time.monotonic()
    with pytest.raises(DialError, match=r"no answer in|timed out"):
        await keywire.dial(f"{url}~stream:{SECRET}", timeout=2.0)
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("scheme", ["redis", "http"])
async def test_listen_on_a_store_that_is_down_fails_fast(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}" + ("/0" if scheme == "redis" else "")
    server = keywire.Server([f"{url}~stream"], Options(timeout=3.0))
    started = time.monotonic()
    with pytest.raises(Exception, match=r"redis|map server"):
        await server.start()
    assert time.monotonic() - started < 3.5
    await server.close()


def test_cli_dial_to_a_dead_store_exits_within_its_timeout() -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    address = f"redis://127.0.0.1:{free_port()}/0~stream:{SECRET}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "keywire", "dial", "--timeout", "3", address],
        input=b"",
        capture_output=True,
        env=env,
        timeout=30,
    )
    took = time.monotonic() - started
    err = done.stderr.decode()
    assert done.returncode != 0
    assert "connected" not in err and "redis" in err, err
    assert "connect" in err.lower() and "after 2.85 s" in err, err  # gave up at its bound
    assert took < 3 + 15, took  # the interpreter's start-up (slow on a busy machine)


async def _fill(server: MapServer) -> None:
    store = HttpStore(server.url)
    try:
        for size in (60_000, 1000):
            with pytest.raises(StoreFull, match="is full"):
                for i in range(10_000):
                    await store.put((i + 100_000 * size).to_bytes(32, "big"), b"x" * size)
    finally:
        await store.close()


async def test_dial_to_a_full_map_server_says_it_is_full() -> None:
    async with MapServer(max_bytes=2 << 20) as server:
        await _fill(server)
        started = time.monotonic()
        with pytest.raises(DialError, match="is full"):
            await keywire.dial(f"{server.url}~stream:{SECRET}", timeout=5.0)
        assert time.monotonic() - started < 5.5


async def test_a_stream_whose_store_fills_up_fails_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backendops, "FULL_GRACE", 1.0)
    options = Options(timeout=5.0, extra={"store.linger": 2.0})
    async with MapServer(max_bytes=4 << 20) as server:
        spec = f"{server.url}~stream:{SECRET}"
        async with keywire.Server([spec], options) as listener:
            conn = await keywire.dial(spec, options)
            stream = await conn.open_stream()
            await stream.write(b"hello")
            accepted = await asyncio.wait_for(listener.accept(), 10)
            peer = await accepted.accept_stream()
            assert await peer.readexactly(5) == b"hello"
            await _fill(server)
            with pytest.raises(StreamError, match="is full"):
                async with asyncio.timeout(20):
                    for _ in range(1000):  # the peer does not read: puts pile up
                        await stream.write(random_bytes(100_000, 5))
            await conn.abort()
            await accepted.abort()


async def test_dial_to_a_full_redis_says_it_is_full(redis_server: RedisProcess) -> None:
    """``maxmemory`` with ``noeviction``: Redis answers puts with OOM, a ``StoreFull``."""
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.config_set("maxmemory-policy", "noeviction")
        used = (await raw.info("memory"))["used_memory"]
        await raw.config_set("maxmemory", str(used + 200_000))
        with pytest.raises(redis_exceptions.OutOfMemoryError):
            for i in range(100):  # fill what is left
                await raw.set(f"filler{i}", b"x" * 50_000)
        started = time.monotonic()
        with pytest.raises(DialError, match="is full"):
            await keywire.dial(f"{redis_server.url}~stream:{SECRET}", timeout=5.0)
        assert time.monotonic() - started < 5.5
    finally:
        await raw.aclose()
