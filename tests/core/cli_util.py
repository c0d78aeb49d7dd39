"""Running the real ``keywire`` command in subprocesses, with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEYWIRE = [sys.executable, "-m", "keywire"]


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = os.environ.copy()
    env.update(extra or {})
    return env


async def run(
    *args: str, stdin: bytes = b"", timeout: float = 20.0, env: Mapping[str, str] | None = None
) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *KEYWIRE,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(env),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it does not end within 5 s."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def listener(
    *args: str, timeout: float = 20.0, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """``keywire listen ARGS``; yields the first stdout line (the address) and the process."""
    proc = await asyncio.create_subprocess_exec(
        *KEYWIRE,
        "listen",
        "--no-qr",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(env),
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
        await stop(proc)


@dataclass
class Running:
    """A keywire process whose stdout and stderr are collected as they come."""

    proc: asyncio.subprocess.Process
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        *args: str,
        stdin: Path | None = None,
        pipe_stdin: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Running:
        source: Any = asyncio.subprocess.PIPE if pipe_stdin else asyncio.subprocess.DEVNULL
        handle = None
        if stdin is not None:
            handle = stdin.open("rb")
            source = handle
        try:
            proc = await asyncio.create_subprocess_exec(
                *KEYWIRE,
                *args,
                stdin=source,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=_env(env),
            )
        finally:
            if handle is not None:
                handle.close()
        self = cls(proc)
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._collect(proc.stdout, self.out)),
            asyncio.ensure_future(self._collect(proc.stderr, self.err)),
        ]
        return self

    @staticmethod
    async def _collect(source: asyncio.StreamReader, sink: bytearray) -> None:
        while chunk := await source.read(65536):
            sink.extend(chunk)

    async def wait_for_err(self, text: str, timeout: float = 20.0) -> str:
        """The first stderr line containing ``text`` (waits for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.err.decode(errors="replace").splitlines():
                    if text in line:
                        return line
                if self.proc.returncode is not None and all(r.done() for r in self._readers):
                    raise AssertionError(f"{text!r} never came; stderr: {self.err.decode()}")
                await asyncio.sleep(0.05)

    async def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit (and all output); kills it after ``timeout``."""
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        await asyncio.gather(*self._readers)
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def close(self) -> None:
        await stop(self.proc)
        for reader in self._readers:
            reader.cancel()


async def stdio_listener(
    *args: str, stdin: Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[Running, str]:
    """``keywire listen --stdio ARGS`` and the address it announced on stderr."""
    lis = await Running.start("listen", "--no-qr", "--stdio", *args, stdin=stdin, env=env)
    line = await lis.wait_for_err("listening on ")
    return lis, line.split("listening on ", 1)[1].strip()
