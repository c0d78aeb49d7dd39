"""Fixtures: real relay processes on 127.0.0.1 (port 0), and a private config directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import keywire

SRC = str(Path(keywire.__file__).resolve().parent.parent)


class RelayProcess:
    """``python -m keywire.link.relay`` in a subprocess; ``url`` is read from its first line.

    Its stderr goes to a file, not a pipe: a pipe nobody reads fills after 64 KiB of log lines
    and then blocks the relay on its next write, which looks like a relay stall.
    """

    def __init__(
        self,
        *flags: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the fixture
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
            stderr=self.stderr,
            env=full_env,
            preexec_fn=preexec_fn,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("ws://"):
            self.kill()
            raise RuntimeError(f"relay did not start: {line!r} {self.stderr_text()}")
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

    def stderr_text(self) -> str:
        """Everything the relay logged so far."""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def logs(self) -> str:
        self.kill()
        return self.stderr_text()


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
        if relay.proc.stdout is not None:
            relay.proc.stdout.close()
        relay.stderr.close()


@pytest.fixture
def relay(relay_factory: Callable[..., RelayProcess]) -> RelayProcess:
    return relay_factory()


@pytest.fixture(autouse=True)
def private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own config directory (credentials, host devices)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"
