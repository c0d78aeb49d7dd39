"""Running the real ``keywire`` command in subprocesses, with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

KEYWIRE = [sys.executable, "-m", "keywire"]


async def run(*args: str, stdin: bytes = b"", timeout: float = 20.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *KEYWIRE, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=os.environ.copy(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


@contextlib.asynccontextmanager
async def listener(
    *args: str, timeout: float = 20.0
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """``keywire listen ARGS``; yields the first stdout line (the address) and the process."""
    proc = await asyncio.create_subprocess_exec(
        *KEYWIRE, "listen", "--no-qr", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=os.environ.copy(),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            assert proc.stderr is not None
            err = await proc.stderr.read()
            raise AssertionError(f"listener printed no address: {err.decode()}")
        yield line.decode().strip(), proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
