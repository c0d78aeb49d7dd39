"""Real servers for the store tests: a map server and a redis-server on free loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from keywire.store.mapserver import MapServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server in a temp dir; ``restart`` keeps the port and the data dir."""

    def __init__(self, directory: Path, persistent: bool) -> None:
        self.directory = directory
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--protected-mode", "no",
                "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always", "--daemonize", "no", "--logfile", ""]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _need_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    _need_redis()
    server = RedisProcess(tmp_path, persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    _need_redis()
    server = RedisProcess(tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def map_server() -> AsyncIterator[MapServer]:
    server = MapServer(max_value=1 << 16)
    await server.start()
    yield server
    await server.close()


def random_bytes(n: int, seed: int) -> bytes:
    """Deterministic incompressible test data."""
    import random

    return random.Random(seed).randbytes(n)
