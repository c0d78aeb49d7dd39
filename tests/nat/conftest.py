"""NAT lab fixtures: a fresh lab per test, removed afterwards whatever the test did."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from typing import IO

import pytest

from .lab import KEYWIRE, Lab, lab_available, remove_stale


@pytest.fixture(scope="session", autouse=True)
def _lab_host() -> None:
    reason = lab_available()
    if reason is not None:  # CI runs these as root; anything else is a broken set-up
        pytest.fail(reason)
    remove_stale()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as made:
        yield made


@pytest.fixture
def relay_stun() -> Iterator[tuple[int, int]]:
    """A real `keywire relay` on loopback with two STUN ports; yields the bound ports."""
    argv = [
        KEYWIRE,
        "relay",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--stun-port",
        "0",
        "--stun-port",
        "0",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        ports = _stun_ports(proc.stderr)
        yield ports
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _stun_ports(stderr: IO[bytes]) -> tuple[int, int]:
    """The ports from the relay's "stun listening" log line (bounded wait)."""
    found: list[tuple[int, int]] = []

    def read() -> None:
        for raw in stderr:
            entry = json.loads(raw)
            if entry.get("msg") == "stun listening":
                a, b = entry["udp_ports"]
                found.append((int(a), int(b)))
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(15)
    if not found:
        raise RuntimeError("the relay did not report its STUN ports")
    return found[0]
