"""``kill -9`` of a writer process mid-transfer, restarted from its saved state."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

from keywire.store import (
    HttpStore,
    MapServer,
    Role,
    StoreParams,
    StoreStream,
    format_secret,
    generate_secret,
    new_state_key,
)

WRITER = Path(__file__).with_name("killnine_writer.py")
SRC = Path(__file__).resolve().parents[2] / "src"


async def start_writer(args: list[str]) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return await asyncio.create_subprocess_exec(
        sys.executable, str(WRITER), *args, env=env, stdout=asyncio.subprocess.PIPE
    )


async def test_kill_9_mid_transfer_then_resume(tmp_path: Path) -> None:
    total, seed = 1_500_000, 77
    expected = random.Random(seed).randbytes(total)
    secret = generate_secret()
    state = tmp_path / "writer.state"
    key = new_state_key()
    args_tail = [format_secret(secret), str(state), key.hex(), str(total), str(seed)]
    async with MapServer() as server:
        store = HttpStore(server.url)
        reader = StoreStream.open(
            store,
            secret,
            Role.LISTENER,
            params=StoreParams(window=8, rto_min=0.05, rto_initial=0.2),
        )
        received = bytearray()

        async def read() -> None:
            while chunk := await reader.read():
                received.extend(chunk)

        reading = asyncio.ensure_future(read())
        try:
            kills = 0
            proc = await start_writer([server.url, *args_tail])
            async with asyncio.timeout(60):
                for fraction in (0.25, 0.6):
                    while len(received) < fraction * total:
                        await asyncio.sleep(0.01)
                    assert state.exists()
                    proc.send_signal(signal.SIGKILL)  # kill -9, twice
                    assert await proc.wait() == -signal.SIGKILL
                    kills += 1
                    proc = await start_writer([server.url, *args_tail])
                    assert proc.stdout is not None
                    line = (await proc.stdout.readline()).decode()
                    assert line.startswith("resumed at ")
                await reading
                assert await proc.wait() == 0
            assert kills == 2
            assert len(received) == total
            assert bytes(received) == expected  # every byte once, in order
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            reading.cancel()
            await reader.abort()
            await store.close()


async def test_kill_9_of_the_reader_then_resume(tmp_path: Path) -> None:
    """The reading side is killed twice; restarted from its state it re-reads from the store
    what it had not consumed at the save, and its output is the stream, byte for byte."""
    total = 1_200_000
    expected = random.Random(5).randbytes(total)
    secret = generate_secret()
    state, output = tmp_path / "reader.state", tmp_path / "out.bin"
    key = new_state_key()
    reader_script = Path(__file__).with_name("killnine_reader.py")
    env = dict(os.environ, PYTHONPATH=str(SRC))

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(reader_script),
            server.url,
            format_secret(secret),
            str(state),
            key.hex(),
            str(output),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )

    async with MapServer() as server:
        store = HttpStore(server.url)
        writer = StoreStream.open(
            store, secret, Role.DIALER, params=StoreParams(window=8, rto_min=0.05, rto_initial=0.2)
        )
        proc = await start()
        try:
            async with asyncio.timeout(60):
                sending = asyncio.ensure_future(writer.write(expected))
                for fraction in (0.3, 0.7):
                    while (
                        not output.exists()
                        or output.stat().st_size < fraction * total
                        or not state.exists()
                    ):
                        await asyncio.sleep(0.01)
                    proc.send_signal(signal.SIGKILL)
                    assert await proc.wait() == -signal.SIGKILL
                    proc = await start()
                    assert proc.stdout is not None
                    assert (await proc.stdout.readline()).startswith(b"resumed at ")
                await sending
                await writer.close_write()
                assert await proc.wait() == 0
                await writer.sync(acked=True)
            assert output.read_bytes() == expected
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await writer.abort()
            await store.close()
