"""``keywire dial`` honours ``--timeout`` and SIGINT while a name lookup hangs (issue 18).

The lookup hangs for real: the command runs in its own mount namespace (``unshare -m``) whose
``/etc/resolv.conf`` (a bind mount; the machine's own file is untouched) names a local UDP
server that reads queries and never answers, with the C resolver told to wait 30 s × 5.
Before, the command printed its timeout at 2 s and then sat in ``asyncio.run``'s join of the
resolver thread for minutes, SIGINT or not.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: a loopback address for the silent name server (port 53: resolv.conf names no port)
NAMESERVER = "127.83.0.53"
EXIT_UNREACHABLE, EXIT_INTERRUPTED = 3, 130


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m (CI runs as root)"),
]


@pytest.fixture
def silent_dns(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A name server that never answers, and a resolv.conf naming only it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((NAMESERVER, 53))
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {NAMESERVER}\noptions timeout:30 attempts:5\n")
    yield server, conf
    server.close()


def start_dial(conf: Path, timeout: float) -> subprocess.Popen[bytes]:
    key = base64.b64encode(os.urandom(32)).decode()
    address = f"net:some-name-that-hangs.example:1~shs:{key}"
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return subprocess.Popen(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            script,
            str(conf),
            sys.executable,
            "-m",
            "keywire",
            "dial",
            "--timeout",
            str(timeout),
            address,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_query(server: socket.socket, within: float = 20.0) -> float:
    """Block until the command's resolver asks; the time it did."""
    server.settimeout(within)
    server.recvfrom(4096)
    return time.monotonic()


def test_timeout_ends_a_hanging_lookup(silent_dns: tuple[socket.socket, Path]) -> None:
    server, conf = silent_dns
    proc = start_dial(conf, 2)
    try:
        asked = wait_for_query(server)
        _out, err = proc.communicate(timeout=20)
        ended = time.monotonic() - asked
    finally:
        proc.kill()
    assert proc.returncode == EXIT_UNREACHABLE, err
    assert b"timed out after 2 s" in err, err
    assert ended < 4.0, ended  # 2 s, not the resolver's 150 s
    print(f"exit {proc.returncode} {ended:.2f} s after the query")


def test_sigint_ends_a_hanging_lookup(silent_dns: tuple[socket.socket, Path]) -> None:
    server, conf = silent_dns
    proc = start_dial(conf, 30)
    try:
        wait_for_query(server)
        time.sleep(0.5)  # well inside the lookup
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
        ended = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert b"interrupted" in err, err
    assert ended < 2.0, ended
    print(f"exit {proc.returncode} {ended:.2f} s after SIGINT")
