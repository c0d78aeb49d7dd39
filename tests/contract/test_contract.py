"""The conformance suite (``keywire.testing``) over every transport and chain.

Each (transport, check) pair is one test, on fresh connections. A check that fails because the
transport diverges from the contract stays strict and is listed in ``DIVERGENCES`` (an xfail
that must keep failing), so the divergence is visible until the transport is fixed.
"""

from __future__ import annotations

import pytest

from keywire.testing import CHECKS

from .conftest import TRANSPORTS

#: (transport, check) → why it fails today and where the fix belongs
DIVERGENCES: dict[tuple[str, str], str] = {}


def _cases() -> list[object]:
    cases: list[object] = []
    for transport in TRANSPORTS:
        for check in CHECKS:
            reason = DIVERGENCES.get((transport, check))
            marks = (
                [pytest.mark.xfail(strict=True, reason=f"divergence: {reason}")] if reason else []
            )
            cases.append(
                pytest.param(
                    transport, check, marks=marks, id=f"{transport.replace('~', '_')}-{check}"
                )
            )
    return cases


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("transport", "check"), _cases())
async def test_contract(transport: str, check: str) -> None:
    start, capabilities = TRANSPORTS[transport]
    async with start() as make_pair:
        await CHECKS[check](make_pair, capabilities)
