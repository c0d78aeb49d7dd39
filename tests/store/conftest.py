"""Real servers for the store tests: a map server and a redis-server on free loopback ports."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from keywire.store.mapserver import MapServer

from .pki import Pki, ServerFiles, make_pki

if TYPE_CHECKING:  # (imported in the fixtures: both import free_port from here)
    from .natsproc import NatsProcess
    from .redisclusterproc import RedisClusterProcesses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server in a temp dir; ``restart`` keeps the port and the data dir."""

    def __init__(
        self,
        directory: Path,
        persistent: bool,
        tls: ServerFiles | None = None,
        ca: Path | None = None,
        modules: tuple[Path, ...] = (),
    ) -> None:
        self.directory = directory
        self.modules = modules
        self.port = free_port()
        self.persistent = persistent
        self.tls = tls
        self.ca = ca
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.tls is None:
            ports = ["--port", str(self.port)]
        else:  # TLS only: no plain-text port at all
            assert self.ca is not None
            ports = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.ca),
                "--tls-auth-clients",
                "no",
            ]
        args = [
            "redis-server",
            *ports,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--protected-mode",
            "no",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        for module in self.modules:
            args += ["--loadmodule", str(module)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if self._ping():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
            sock: socket.socket = raw
            if self.tls is not None:
                sock = ssl.create_default_context(cafile=str(self.ca)).wrap_socket(
                    raw, server_hostname="127.0.0.1"
                )
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

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


@pytest.fixture(scope="session")
def keywire_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """keywire's Redis module, compiled once per test session."""
    from keywire.store.redismodule import build

    return build(tmp_path_factory.mktemp("redismodule"))


@pytest.fixture
def module_redis(tmp_path: Path, keywire_module: Path) -> Iterator[RedisProcess]:
    """A redis-server with keywire's module loaded (``KEYWIRE.PUT`` checks signatures)."""
    _need_redis()
    server = RedisProcess(tmp_path, persistent=False, modules=(keywire_module,))
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
def pki(tmp_path: Path) -> Pki:
    """A throwaway CA and server certificates for 127.0.0.1 (see ``pki.py``)."""
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_pki(directory)


@pytest.fixture
def tls_redis(tmp_path: Path, pki: Pki) -> Iterator[RedisProcess]:
    """A redis-server that speaks only TLS, with the ``pki`` server certificate."""
    _need_redis()
    server = RedisProcess(tmp_path, persistent=False, tls=pki.server, ca=pki.ca)
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


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    """A NATS server with JetStream of our own (``tests/store/natsproc.py``)."""
    from .natsproc import NatsProcess, need_nats

    need_nats()
    server = NatsProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterProcesses]:
    """Three Redis Cluster masters of our own (``tests/store/redisclusterproc.py``)."""
    from .redisclusterproc import RedisClusterProcesses

    nodes = RedisClusterProcesses(tmp_path)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
