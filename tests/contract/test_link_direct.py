"""The conformance suite on a Link connection whose new streams have moved to the direct path.

A Link host and client on loopback with a real relay and a STUN server: the client's
``PathConnection`` punches (no NAT here, so the first round connects) and every check then
opens its streams over the direct KPS connection while the relayed session carries the
connection's lifetime and close codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from keywire.address import parse
from keywire.link.handler import LinkHandler
from keywire.nat.linkconn import PathConnection
from keywire.nat.stunio import StunServer
from keywire.options import Options
from keywire.stream import Connection
from keywire.testing import CHECKS, MakePair

from ..link.conftest import RelayProcess
from .conftest import MUX, _Handing, _teardown

Pair = tuple[Connection, Connection]


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    made = RelayProcess()
    yield made
    made.kill()
    for pipe in (made.proc.stdout, made.proc.stderr):
        if pipe is not None:
            pipe.close()


async def _wait_direct(conn: Connection, timeout: float = 10.0) -> None:
    assert isinstance(conn, PathConnection), conn
    async with asyncio.timeout(timeout):
        while not conn.path.startswith("direct"):
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def direct_link(
    relay: RelayProcess, client_extra: dict[str, object] | None = None
) -> AsyncIterator[MakePair]:
    """Host and client on loopback; ``client_extra``: more settings for the client's dials."""
    stun = StunServer("127.0.0.1", [0])
    (stun_port,) = await stun.start()
    extra: dict[str, object] = {"link.stun": f"127.0.0.1:{stun_port}"}
    with tempfile.TemporaryDirectory(prefix="kw-contract-direct-") as directory:
        host = _Handing([relay.url], Path(directory) / "host")
        host.extra = dict(extra)
        await host.start()
        paired = False

        @contextlib.asynccontextmanager
        async def make_pair() -> AsyncIterator[Pair]:
            nonlocal paired
            client = await _dial(host, paired, {**extra, **(client_extra or {})})
            paired = True
            accepted = await asyncio.wait_for(host.queue.get(), 10)
            try:
                await _wait_direct(client)
                await _wait_direct(accepted)
                yield client, accepted
            finally:
                await _teardown(client, accepted)

        try:
            yield make_pair
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(host.close(), 5)
            stun.close()


async def _dial(host: _Handing, paired: bool, extra: dict[str, object]) -> Connection:
    if paired:
        options = Options(timeout=5.0, extra=dict(extra))
    else:
        assert host.code is not None
        options = Options(timeout=5.0, extra={**extra, "link.pairing_code": host.code})
    return await LinkHandler().dial(parse(host.announced).alternatives[0], options)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("check", list(CHECKS))
async def test_link_direct_contract(relay: RelayProcess, check: str) -> None:
    async with direct_link(relay) as make_pair:
        await CHECKS[check](make_pair, replace(MUX, bulk=512 * 1024))
