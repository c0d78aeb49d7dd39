"""nats-server processes for the store tests: one JetStream server, or a three-node
JetStream cluster on loopback, each in its own directory, stopped by the fixture."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import free_port


def need_nats() -> None:
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed (bash scripts/install.sh --test)")


class NatsProcess:
    """One ``nats-server -js``; ``routes`` makes it a member of a JetStream cluster."""

    def __init__(self, directory: Path, name: str = "n1") -> None:
        self.directory = directory
        self.name = name
        self.port = free_port()
        self.cluster_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, routes: list[int] | None = None) -> None:
        args = [
            "nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port),
            "-sd", str(self.directory), "-n", self.name,
        ]  # fmt: skip
        if routes is not None:
            args += [
                "--cluster_name", "kw", "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes),
            ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4) == b"INFO":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def start_cluster(base: Path, size: int = 3) -> list[NatsProcess]:
    """``size`` servers routed to each other; JetStream elects its meta leader after this."""
    nodes = []
    for i in range(size):
        directory = base / f"nats{i}"
        directory.mkdir()
        nodes.append(NatsProcess(directory, name=f"n{i}"))
    routes = [n.cluster_port for n in nodes]
    for node in nodes:
        node.start(routes)
    return nodes
