"""The CLI as netcat, end to end: `keywire listen SPEC --stdio < A > a` and
`keywire dial ADDR < B > b` as real processes on every transport, both directions, sizes
0 B, 1 B, 3 MB and 64 MB, with the other side's stdin empty or full.

Each case asserts netcat semantics exactly: a is B and b is A (sha256, so the listener's
stdout holds the data and nothing else, not even its address), both processes exit 0, and
both end within a bound derived from the size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import FULL, Payloads
from .helpers import MB, check_transfer, human, run_transfer
from .transports import TRANSPORTS, setup_for

pytestmark = pytest.mark.timeout(200)


def _cases() -> list[tuple[int, int, str]]:
    """(listener input size, dialer input size, id); "other full" means FULL bytes."""
    cases: dict[tuple[int, int], str] = {(0, 0): "0B-both-empty", (FULL, FULL): "3MB-both-full"}
    for other in ("empty", "full"):
        for size in (0, 1, 3 * MB, 64 * MB):
            for direction in ("L2D", "D2L"):
                other_size = FULL if other == "full" else 0
                pair = (size, other_size) if direction == "L2D" else (other_size, size)
                cases.setdefault(pair, f"{human(size)}-{direction}-other-{other}")
    return [(lsize, dsize, name) for (lsize, dsize), name in cases.items()]


CASES = _cases()


@pytest.mark.parametrize(("lsize", "dsize"), [c[:2] for c in CASES], ids=[c[2] for c in CASES])
@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_stdio_transfer(
    transport: str,
    lsize: int,
    dsize: int,
    payloads: Payloads,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    setup = setup_for(transport, request, tmp_path)
    listener_in, dialer_in = payloads.listener[lsize], payloads.dialer[dsize]
    outcome = run_transfer(
        setup.listen_args,
        tmp_path,
        listener_in=listener_in,
        dialer_in=dialer_in,
        bound=setup.bound(lsize + dsize),
        listener_env=setup.listener_env,
        dialer_env=setup.dialer_env,
        dial_args=setup.dial_args,
    )
    problems = check_transfer(outcome, listener_in, dialer_in)
    for out in (outcome.listener.out, outcome.dialer.out):
        out.unlink(missing_ok=True)  # up to 64 MB each; the digests were taken
    assert not problems, "\n".join(problems)
