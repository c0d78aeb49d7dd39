"""A store-stream echo through a real redis-server that is stopped (SIGSTOP) or killed (kill -9,
restarted with its append-only file) in the middle: it resumes and completes byte-exact
within a bound (issue 18, item 3). The exhaustive version is the simulation in
``test_outages.py``; this one proves the real backends (redis-py, pub/sub) recover too."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import keywire
from keywire.options import Options
from keywire.store import format_secret, generate_secret
from keywire.stream import Stream

from .conftest import RedisProcess, random_bytes

SIZE = 32 * 1024 * 1024
OPTIONS = Options(extra={"store.linger": 5.0})
#: the whole echo, outage included, must finish within this
BOUND = 90.0


async def _echo(stream: Stream) -> None:
    while data := await stream.read(1 << 16):
        await stream.write(data)
    await stream.close_write()


async def _echo_through(redis: RedisProcess, outage: Callable[[], Awaitable[None]]) -> float:
    spec = f"{redis.url}~stream:{format_secret(generate_secret())}"
    payload = random_bytes(SIZE, 42)
    started = time.monotonic()
    async with keywire.Server([spec], OPTIONS) as server:

        async def serve() -> None:
            conn = await server.accept()
            await _echo(await conn.accept_stream())
            await conn.close()

        serving = asyncio.ensure_future(serve())
        conn = await keywire.dial(spec, OPTIONS)
        stream = await conn.open_stream()
        received = bytearray()

        async def send() -> None:
            for i in range(0, SIZE, 1 << 20):
                await stream.write(payload[i : i + (1 << 20)])
            await stream.close_write()

        async def receive() -> None:
            while data := await stream.read(1 << 16):
                received.extend(data)

        async def disturb() -> None:
            while len(received) < SIZE // 3:
                await asyncio.sleep(0.02)
            await outage()

        try:
            async with asyncio.timeout(BOUND):
                await asyncio.gather(send(), receive(), disturb())
                await serving
                await conn.close()
        finally:
            serving.cancel()
        assert len(received) == SIZE and bytes(received) == payload
    return time.monotonic() - started


async def test_sigstop_for_3_s_mid_echo(redis_server: RedisProcess) -> None:
    async def pause() -> None:
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(3.0)
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)

    took = await _echo_through(redis_server, pause)
    print(f"32 MiB echo with a 3 s SIGSTOP: {took:.1f} s")


async def test_kill_9_and_restart_with_aof_mid_echo(persistent_redis: RedisProcess) -> None:
    loop = asyncio.get_running_loop()

    async def kill_and_restart() -> None:
        proc = persistent_redis.proc
        assert proc is not None
        proc.kill()
        await loop.run_in_executor(None, proc.wait)
        await asyncio.sleep(1.0)
        await loop.run_in_executor(None, persistent_redis.start)

    took = await _echo_through(persistent_redis, kill_and_restart)
    print(f"32 MiB echo with kill -9 and a restart: {took:.1f} s")
