"""A truncated transfer never exits 0: when one side is SIGKILLed mid-transfer (its stdin
still open, so it never reached EOF), the other side exits non-zero within a bound.

Store streams are left out: their two ends share only a key-value store, so a vanished peer
looks like a slow one and there is nothing to notice it by but a timeout of the user's.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from .helpers import Proc, spawn, wait_for_address
from .transports import setup_for

pytestmark = pytest.mark.timeout(120)

#: transport → seconds the survivor may take to notice (QUIC has only its idle timeout
#: when the peer's process vanishes without a word: shortened by IDLE below)
TRANSPORTS = {
    "kps": 20.0,
    "net_shs": 15.0,
    "net_shs_mux": 15.0,
    "ws_shs_mux": 15.0,
    "ws_noauth": 15.0,
    "unix_shs": 15.0,
    "link": 20.0,
}
#: kps: notice a silent peer after 4 s (keepalive keeps a live but idle one up)
IDLE = ["--idle-timeout", "4", "--keepalive", "1"]
#: bytes the receiving side must have written out before the sender is killed
MIDWAY = 256 * 1024


def feed_forever(p: Proc) -> threading.Thread:
    """Write random bytes into ``p``'s stdin pipe until it breaks (the process died)."""
    assert p.proc.stdin is not None
    fd = p.proc.stdin.fileno()

    def run() -> None:
        chunk = os.urandom(65536)
        try:
            while True:
                os.write(fd, chunk)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for_output(p: Proc, size: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while p.out.stat().st_size < size:
        if p.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"{p.name} wrote {p.out.stat().st_size} bytes, not "
                f"{size}, before the kill {p.describe()}"
            )
        time.sleep(0.02)


def run_killed(
    transport: str, victim: str, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Proc, int | None, float]:
    """Sender ``victim`` ("listener"/"dialer") streams endlessly and is SIGKILLed once the
    receiver wrote MIDWAY bytes; returns the receiver, its exit code and how long it took."""
    setup = setup_for(transport, request, tmp_path)
    idle = IDLE if transport == "kps" else []
    lis = spawn(
        "listener",
        ["listen", *setup.listen_args, *idle, "--stdio", "--no-qr"],
        tmp_path,
        env=setup.listener_env,
        stdin_pipe=victim == "listener",
    )
    dia: Proc | None = None
    try:
        address = wait_for_address(lis)
        dia = spawn(
            "dialer",
            ["dial", address, *setup.dial_args, *idle],
            tmp_path,
            env=setup.dialer_env,
            stdin_pipe=victim == "dialer",
        )
        sender, receiver = (lis, dia) if victim == "listener" else (dia, lis)
        feed_forever(sender)
        wait_for_output(receiver, MIDWAY)
        sender.kill()
        killed = time.monotonic()
        code = receiver.wait(killed + TRANSPORTS[transport])
        return receiver, code, time.monotonic() - killed
    finally:
        for p in (lis, dia):
            if p is not None:
                p.kill()
                if p.proc.stdin is not None:
                    p.proc.stdin.close()


@pytest.mark.parametrize("victim", ["listener", "dialer"])
@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_killed_sender_fails_the_receiver(
    transport: str, victim: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    receiver, code, took = run_killed(transport, victim, request, tmp_path)
    assert code is not None, (
        f"{receiver.name} still running {took:.0f} s after its peer was killed "
        f"{receiver.describe()}"
    )
    assert code != 0, (
        f"{receiver.name} exited 0 after a truncated transfer "
        f"({receiver.out.stat().st_size} bytes) {receiver.describe()}"
    )
