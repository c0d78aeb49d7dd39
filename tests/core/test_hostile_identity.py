"""Key paths and key files that must give a clear error, not a traceback or a hang (issue 18)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keywire.errors import IdentityError
from keywire.identity import MAX_KEY_FILE, Identity

from .cli_util import KEYWIRE


def keywire_id(key: Path, *, without_dac: bool = False) -> subprocess.CompletedProcess[bytes]:
    # root reads any directory; without the two DAC capabilities it is held to the modes
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if without_dac else []
    return subprocess.run(
        [*prefix, *KEYWIRE, "id", "--key", str(key)], capture_output=True, timeout=30, check=False
    )


def assert_clean_failure(result: subprocess.CompletedProcess[bytes], words: bytes) -> None:
    assert result.returncode == 2, result.stderr
    assert b"Traceback" not in result.stderr
    assert words in result.stderr, result.stderr
    assert len(result.stderr) < 400


def test_key_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    assert_clean_failure(keywire_id(tmp_path / "plain" / "identity.pem"), b"Not a directory")
    with pytest.raises(IdentityError, match="Not a directory"):
        Identity.load_or_create(tmp_path / "plain" / "sub" / "identity.pem")


def test_key_path_in_an_unreadable_directory(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir()
    Identity.generate().save(closed / "identity.pem")
    closed.chmod(0)
    try:
        result = keywire_id(closed / "identity.pem", without_dac=os.geteuid() == 0)
    finally:
        closed.chmod(0o700)
    assert_clean_failure(result, b"Permission denied")


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_key_file_linked_to_an_endless_device(tmp_path: Path, target: str) -> None:
    link = tmp_path / "identity.pem"
    link.symlink_to(target)
    start = time.monotonic()
    assert_clean_failure(keywire_id(link), b"not a regular file")
    assert time.monotonic() - start < 15


def test_fifo_key_file_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "identity.pem"
    os.mkfifo(fifo)
    assert_clean_failure(keywire_id(fifo), b"not a regular file")


def test_huge_key_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "identity.pem"
    with big.open("wb") as f:
        f.truncate(4 << 30)  # sparse: 4 GiB that cost nothing to make
    assert_clean_failure(keywire_id(big), b"at most")
    with pytest.raises(IdentityError, match=str(MAX_KEY_FILE)):
        Identity.load(big)


def test_readable_key_file_gives_a_warning_like_ssh(tmp_path: Path) -> None:
    key = tmp_path / "identity.pem"
    Identity.generate().save(key)
    quiet = keywire_id(key)
    assert quiet.returncode == 0 and quiet.stderr == b""
    key.chmod(0o644)
    loud = keywire_id(key)
    assert loud.returncode == 0, loud.stderr
    assert b"accessible by group or others" in loud.stderr
    assert b"chmod 600" in loud.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # warned, not changed behind the user


def test_bad_key_file_in_a_library_call_is_identity_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"\xff" * 100)
    with pytest.raises(IdentityError, match="not PEM"):
        Identity.load(tmp_path / "f")
    assert sys.platform != "win32"
