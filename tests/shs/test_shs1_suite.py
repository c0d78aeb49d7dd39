"""The language-neutral shs1 test suite (npm ``shs1-test``) against our adapters.

``shs1testserver`` plays a client (good, or sending bad msg1/msg3) against our server adapter;
``shs1testclient`` plays a server against our client adapter. Each run starts 45 handshakes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from .npm import NPM_DIR, require_npm

HERE = Path(__file__).resolve().parent


def wrapper(tmp_path: Path, role: str) -> Path:
    """An executable the suite can spawn: this interpreter running our adapter."""
    script = tmp_path / f"shs1_{role}.sh"
    adapter = HERE / f"shs1_adapter_{role}.py"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{adapter}" "$@"\n')
    script.chmod(0o755)
    return script


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", ["server", "client"])
async def test_shs1_suite(role: str, tmp_path: Path) -> None:
    node = require_npm()
    suite = NPM_DIR / "node_modules" / "shs1-test" / f"test-{role}.js"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(suite),
        str(wrapper(tmp_path, role)),
        "keywire-shs1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(50):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert f"Passed the {role} test suite" in text
