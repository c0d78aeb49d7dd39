"""A store-stream address that already carried a session is never replayed: a new dial gets
a fresh session or a clear refusal, and never the first session's bytes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import FULL, Payloads
from .helpers import Proc, file_digest, make_payload, run_transfer, spawn
from .transports import setup_for

pytestmark = pytest.mark.timeout(120)

#: what the first session carries (small: the point is what a second dial gets)
FIRST_SIZE = 100_000
#: how long a lone second dialer is watched (it has no peer, so it may wait for one)
WATCH = 8.0


def used_address(
    backend: str, payloads: Payloads, request: pytest.FixtureRequest, workdir: Path
) -> tuple[str, bytes]:
    """Run one session in which the listener sends FIRST_SIZE bytes; return its address and
    those bytes. Only the delivery is required here (exit codes and the listener's stdout are
    the matrix's business), so a replay is tested even where those still fail."""
    setup = setup_for(backend, request, workdir)
    first_in, empty = make_payload(workdir / "first-input", FIRST_SIZE), payloads.dialer[0]
    outcome = run_transfer(
        setup.listen_args,
        workdir,
        listener_in=first_in,
        dialer_in=empty,
        bound=setup.bound(FIRST_SIZE),
        listener_env=setup.listener_env,
        dialer_env=setup.dialer_env,
        dial_args=setup.dial_args,
    )
    assert outcome.dialer_got == (first_in.size, first_in.sha256), (
        f"the first session did not deliver its bytes: {outcome.dialer_got[0]} of "
        f"{first_in.size} {outcome.dialer.describe()} {outcome.listener.describe()}"
    )
    address = outcome.dialer.args[1]
    assert "~stream:" in address, address
    return address, first_in.path.read_bytes()


def replayed(p: Proc, first: bytes) -> bool:
    """Whether ``p`` wrote any of the first session's bytes (its opening bytes will do:
    they are random, so no fresh session produces them by chance)."""
    data = p.out.read_bytes()
    return bool(data) and (first.startswith(data[:4096]) or first[:64] in data)


@pytest.mark.parametrize(
    "backend", ["store_http", "store_http_signed", "store_redis", "store_redis_module"]
)
def test_lone_second_dial_gets_nothing_old(
    backend: str, payloads: Payloads, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    address, first = used_address(backend, payloads, request, first_dir)
    setup = setup_for(backend, request, second_dir)
    again = spawn(
        "second-dialer", ["dial", address, *setup.dial_args], second_dir, env=setup.dialer_env
    )
    code = again.wait(time.monotonic() + WATCH)  # None: still waiting for a listener
    old_bytes = replayed(again, first)
    assert not old_bytes, (
        f"a second dial on a used address printed the first session's bytes "
        f"({again.out.stat().st_size} bytes) {again.describe()}"
    )
    assert again.out.stat().st_size == 0, f"no listener, yet data arrived {again.describe()}"
    assert code != 0, f"a second dial with no listener exited 0 {again.describe()}"


@pytest.mark.parametrize(
    "backend", ["store_http", "store_http_signed", "store_redis", "store_redis_module"]
)
def test_second_session_on_used_address_is_fresh(
    backend: str, payloads: Payloads, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A second listener on the same address and a second dialer: either they carry the new
    bytes exactly (a fresh session) or one of them refuses; never the old bytes."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    address, first = used_address(backend, payloads, request, first_dir)
    setup = setup_for(backend, request, second_dir)
    second_in, dialer_in = payloads.dialer[FULL], payloads.dialer[1]
    lis = spawn(
        "listener",
        ["listen", address, *setup.listen_args[1:], "--stdio", "--no-qr"],
        second_dir,
        stdin=second_in.path,
        env=setup.listener_env,
    )
    dia = spawn(
        "dialer",
        ["dial", address, *setup.dial_args],
        second_dir,
        stdin=dialer_in.path,
        env=setup.dialer_env,
    )
    deadline = time.monotonic() + setup.bound(FULL)
    try:
        dialer_code = dia.wait(deadline)
        listener_code = lis.wait(time.monotonic() + 5.0)
    finally:
        lis.kill()
        dia.kill()
    old_bytes = replayed(dia, first)
    assert not old_bytes, (
        f"the second dialer printed the first session's bytes {dia.describe()} {lis.describe()}"
    )
    got = file_digest(dia.out)
    if got == (second_in.size, second_in.sha256):
        assert (dialer_code, listener_code) == (0, 0), f"{dia.describe()} {lis.describe()}"
        assert file_digest(lis.out) == (dialer_in.size, dialer_in.sha256), lis.describe()
    else:  # a refusal: clear, non-zero, and no data at all
        assert got[0] == 0, f"the second dialer printed {got[0]} wrong bytes {dia.describe()}"
        refused = [p for p, c in ((dia, dialer_code), (lis, listener_code)) if c not in (0, None)]
        assert refused, f"neither side refused nor delivered {dia.describe()} {lis.describe()}"
        assert all(p.stderr_text().strip() for p in refused), "a refusal must say why"
