"""Fixtures: real relay processes on 127.0.0.1 (port 0), and a private config directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import keywire

SRC = str(Path(keywire.__file__).resolve().parent.parent)


class RelayProcess:
    """``python -m keywire.link.relay`` in a subprocess; ``url`` is read from its first line."""

    def __init__(self, *flags: str, port: int = 0, env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keywire.link.relay",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("ws://"):
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"relay did not start: {line!r} {err}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        self.http = self.url.replace("ws://", "http://").removesuffix("/v1/link")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def logs(self) -> str:
        self.kill()
        return self.proc.stderr.read().decode() if self.proc.stderr else ""


@pytest.fixture
def relay_factory() -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(*flags: str, port: int = 0, env: dict[str, str] | None = None) -> RelayProcess:
        relay = RelayProcess(*flags, port=port, env=env)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.kill()
        for stream in (relay.proc.stdout, relay.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def relay(relay_factory: Callable[..., RelayProcess]) -> RelayProcess:
    return relay_factory()


@pytest.fixture(autouse=True)
def private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own config directory (credentials, host devices)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"
