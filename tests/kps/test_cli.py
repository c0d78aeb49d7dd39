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
        sys.executable,
        "-c",
        RUNNER,
        "listen",
        "kps:127.0.0.1:0",
        "--echo",
        "--key",
        str(tmp_path / "server.pem"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        assert listener.stdout is not None
        line = await asyncio.wait_for(listener.stdout.readline(), 20)
        address = line.decode().strip()
        assert address.startswith("kps:127.0.0.1:")
        payload = os.urandom(300_000)
        dialer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUNNER,
            "dial",
            address,
            "--key",
            str(tmp_path / "client.pem"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
        )
        out, err = await asyncio.wait_for(dialer.communicate(payload), 30)
        assert dialer.returncode == 0, err.decode()
        assert out == payload
    finally:
        listener.terminate()
        await asyncio.wait_for(listener.wait(), 10)


async def test_listen_stdio_over_kps_takes_one_session(tmp_path: Path) -> None:
    """`listen --stdio kps:…`: the address goes to stderr (stdout holds only the peer's bytes),
    and once the session runs a second dialer is turned away at once (queue-full, exit 1)."""
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUNNER,
        "listen",
        "--no-qr",
        "--stdio",
        "kps:127.0.0.1:0",
        "--key",
        str(tmp_path / "server.pem"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    first = None
    try:
        assert listener.stdin and listener.stdout and listener.stderr
        async with asyncio.timeout(20):
            while b"listening on " not in (line := await listener.stderr.readline()):
                assert line, "the listener ended without announcing its address"
        address = line.decode().split("listening on ", 1)[1].strip()
        assert address.startswith("kps:127.0.0.1:")
        first = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUNNER,
            "dial",
            address,
            "--key",
            str(tmp_path / "c1.pem"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
        )
        assert first.stdin is not None
        first.stdin.write(b"first")
        assert await asyncio.wait_for(listener.stdout.readexactly(5), 20) == b"first"

        started = asyncio.get_running_loop().time()
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUNNER,
            "dial",
            address,
            "--key",
            str(tmp_path / "c2.pem"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
        )
        _, err = await asyncio.wait_for(second.communicate(b"second"), 30)
        assert second.returncode == 1, err.decode()
        assert b"queue-full" in err
        assert asyncio.get_running_loop().time() - started < 8

        listener.stdin.write(b"answer")
        listener.stdin.close()
        first.stdin.close()
        out, err = await asyncio.wait_for(first.communicate(), 30)
        assert first.returncode == 0, err.decode()
        assert out == b"answer"
        rest, lis_err = await asyncio.wait_for(listener.communicate(), 30)
        assert listener.returncode == 0, lis_err.decode()
        assert rest == b""
    finally:
        for proc in (first, listener):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
