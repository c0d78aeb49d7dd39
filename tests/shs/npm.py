"""Starting the npm peers in tests/interop/npm."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ..node_events import NodeEventLog

NPM_DIR = Path(__file__).resolve().parents[1] / "interop" / "npm"
NODE = shutil.which("node")


def require_npm() -> str:
    """The node binary; fails (not skips) when the harness is not installed."""
    if NODE is None:
        pytest.fail("node is not installed: the npm interop tests need Node >= 18")
    if not (NPM_DIR / "node_modules" / "multiserver").is_dir():
        pytest.fail(f"npm peers missing: run `npm ci --prefix {NPM_DIR}`")
    return NODE


def payload(size: int) -> bytes:
    """The bytes the Node scripts send and expect (SHAKE128 of a fixed label)."""
    return hashlib.shake_128(b"keywire-interop").digest(size)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def node_env(
    app_key: bytes | None = None, seed: bytes | None = None, **extra: str
) -> dict[str, str]:
    env = dict(os.environ)
    if app_key is not None:
        env["KW_APP_KEY"] = b64(app_key)
    if seed is not None:
        env["KW_SEED"] = b64(seed)
    env.update(extra)
    return env


class NodeServer(NodeEventLog):
    """A running ms_server.js: its address and the JSON events it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, first: dict[str, Any]) -> None:
        super().__init__(proc)
        self.address: str = first["address"]

    async def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        return (await self.wait_events(kind, 1, timeout))[0]

    def alternative(self, scheme: str) -> str:
        return next(a for a in self.address.split(";") if a.startswith(scheme))


@contextlib.asynccontextmanager
async def node_server(app_key: bytes, seed: bytes, allow: str = "*") -> AsyncIterator[NodeServer]:
    node = require_npm()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(NPM_DIR / "ms_server.js"),
        cwd=NPM_DIR,
        env=node_env(app_key, seed, KW_ALLOW=allow),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            first = json.loads(await proc.stdout.readline())
        server = NodeServer(proc, first)
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def node_client(
    address: str, app_key: bytes, seed: bytes, size: int, plugs: str = "", timeout: float = 60.0
) -> dict[str, Any]:
    """Run ms_client.js to completion; returns its JSON verdict."""
    node = require_npm()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(NPM_DIR / "ms_client.js"),
        address,
        cwd=NPM_DIR,
        env=node_env(
            app_key,
            seed,
            KW_BYTES=str(size),
            KW_PLUGS=plugs,
            KW_TIMEOUT_MS=str(int(timeout * 1000)),
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout + 10):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().strip().splitlines()
    if not lines:
        raise AssertionError(f"ms_client.js printed nothing; stderr: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["exit"] = proc.returncode
    return result


async def node_box_frames(key: bytes, nonce: bytes, chunks: list[bytes]) -> bytes:
    """pull-box-stream's encoding of ``chunks`` (goodbye included)."""
    node = require_npm()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(NPM_DIR / "boxstream_frames.js"),
        key.hex(),
        nonce.hex(),
        *(c.hex() for c in chunks),
        cwd=NPM_DIR,
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    return bytes.fromhex(out.decode().strip())
