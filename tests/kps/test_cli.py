"""``keywire listen kps:… --echo`` and ``keywire dial kps:…`` (pipe mode) as processes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

# the CLI with the kps handler registered, whether or not the built-in plugin list has it yet
RUNNER = """
import sys
from keywire.registry import registry
from keywire.kps import KpsHandler
registry.load()
if not any(isinstance(h, KpsHandler) for h in registry.handlers):
    registry.add_handler(KpsHandler())
from keywire.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def test_listen_echo_and_dial_pipe_over_kps(tmp_path: Path) -> None:
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUNNER, "listen", "kps:127.0.0.1:0", "--echo",
        "--key", str(tmp_path / "server.pem"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
    try:
        assert listener.stdout is not None
        line = await asyncio.wait_for(listener.stdout.readline(), 20)
        address = line.decode().strip()
        assert address.startswith("kps:127.0.0.1:")
        payload = os.urandom(300_000)
        dialer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RUNNER, "dial", address,
            "--key", str(tmp_path / "client.pem"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_env())
        out, err = await asyncio.wait_for(dialer.communicate(payload), 30)
        assert dialer.returncode == 0, err.decode()
        assert out == payload
    finally:
        listener.terminate()
        await asyncio.wait_for(listener.wait(), 10)
