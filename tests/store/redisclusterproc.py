"""A three-master Redis Cluster on loopback for the store tests (``redis-server
--cluster-enabled yes`` ×3, joined by ``redis-cli --cluster create``)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class RedisClusterProcesses:
    def __init__(self, base: Path, size: int = 3, modules: tuple[Path, ...] = ()) -> None:
        self.base = base
        #: loaded on every node (``--loadmodule``)
        self.modules = modules
        self.ports = [cluster_port() for _ in range(size)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _start_node(self, port: int) -> None:
        directory = self.base / f"redis{port}"
        directory.mkdir(exist_ok=True)
        args = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000", "--dir", str(directory), "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--logfile", "",
        ]  # fmt: skip
        for module in self.modules:
            args += ["--loadmodule", str(module)]
        self.procs[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def start(self) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            pytest.fail("redis-server/redis-cli are not installed (bash scripts/install.sh --test)")
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            self._wait(port, lambda p=port: self._cmd(p, b"PING").startswith(b"+PONG"))
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )  # fmt: skip
        for port in self.ports:
            self._wait(port, lambda p=port: b"cluster_state:ok" in self._cmd(p, b"CLUSTER INFO"))

    @staticmethod
    def _cmd(port: int, command: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(command + b"\r\n")
            time.sleep(0.02)
            return sock.recv(4096)

    @staticmethod
    def _wait(port: int, ready: object) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis cluster node {port} not ready")

    def kill(self, port: int) -> None:
        """SIGKILL one master (its frames are lost: no persistence here)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(5)

    def restart(self, port: int) -> None:
        """Start a killed master again; its nodes.conf makes it rejoin with its slots."""
        self._start_node(port)
        self._wait(port, lambda: b"cluster_state:ok" in self._cmd(port, b"CLUSTER INFO"))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
