"""One ``make_pair`` factory per transport and chain, built from the project's real servers.

Each entry of ``TRANSPORTS`` gives a ``Subject``: an async context manager that starts what the
transport needs (a ``keywire.Server``, a Link host on a real relay, a memory store) and yields
the ``make_pair`` factory the conformance suite calls, with the transport's declared
``Capabilities``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import keywire
from keywire.errors import Code
from keywire.identity import Identity
from keywire.mux.connection import MuxConnection
from keywire.options import Options
from keywire.store import MemoryStore, Role, StoreParams, StoreStream
from keywire.stream import Connection
from keywire.testing import Capabilities, DatagramSupport, MakePair, memory_pipe_pair

from ..link.conftest import RelayProcess
from ..link.helpers import EchoHost, dial
from ..mux.conftest import open_pair

Pair = tuple[Connection, Connection]


@dataclass(frozen=True)
class Subject:
    """A transport under test: how to make pairs, and what it declares."""

    make_pair: MakePair
    capabilities: Capabilities


async def _teardown(*conns: Connection) -> None:
    """Abort both ends quietly (a check may have left them in any state)."""
    for conn in conns:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.abort(Code.CANCELLED), 3)


@contextlib.asynccontextmanager
async def served(
    spec: str, client_extra: dict[str, object] | None = None
) -> AsyncIterator[MakePair]:
    """A ``keywire.Server`` on ``spec``; each pair is one dial to it and its accepted end."""
    async with keywire.Server([spec], Options(identity=Identity.generate())) as server:
        address = server.address()
        client_options = Options(identity=Identity.generate(), extra=dict(client_extra or {}))

        @contextlib.asynccontextmanager
        async def make_pair() -> AsyncIterator[Pair]:
            client = await keywire.dial(address, client_options)
            try:
                accepted = await asyncio.wait_for(server.accept(), 10)
            except BaseException:
                await _teardown(client)
                raise
            try:
                yield client, accepted
            finally:
                await _teardown(client, accepted)

        yield make_pair


@contextlib.asynccontextmanager
async def mux_tcp() -> AsyncIterator[MakePair]:
    @contextlib.asynccontextmanager
    async def make_pair() -> AsyncIterator[Pair]:
        pair, tcp_server = await open_pair()
        try:
            yield pair.client, pair.server
        finally:
            await _teardown(pair.client, pair.server)
            tcp_server.close()
            await tcp_server.wait_closed()

    yield make_pair


@contextlib.asynccontextmanager
async def mux_memory() -> AsyncIterator[MakePair]:
    @contextlib.asynccontextmanager
    async def make_pair() -> AsyncIterator[Pair]:
        a, b = memory_pipe_pair()
        client = MuxConnection(a, client=True, address="memory~mux")
        server = MuxConnection(b, client=False, address="memory~mux")
        try:
            yield client, server
        finally:
            await _teardown(client, server)

    yield make_pair


class _Handing(EchoHost):
    """A Link host that hands each connection to the test instead of echoing it."""

    def __init__(self, urls: list[str], store: Path) -> None:
        super().__init__(urls, store)
        self.queue: asyncio.Queue[Connection] = asyncio.Queue()

    async def _serve(self, conn: Connection) -> None:
        self.connections.append(conn)
        await self.queue.put(conn)
        await conn.wait_closed()


_relay: RelayProcess | None = None


@contextlib.asynccontextmanager
async def link() -> AsyncIterator[MakePair]:
    """A Link host on a real relay (one relay process for the whole run); the first pair
    pairs with the code, later ones reconnect with the stored credential."""
    global _relay
    if _relay is None or _relay.proc.poll() is not None:
        _relay = RelayProcess()
    with tempfile.TemporaryDirectory(prefix="kw-contract-link-") as directory:
        async with _link_host(_relay, Path(directory)) as make_pair:
            yield make_pair


@contextlib.asynccontextmanager
async def _link_host(relay: RelayProcess, store: Path) -> AsyncIterator[MakePair]:
    host = _Handing([relay.url], store / "host")
    await host.start()
    paired = False

    @contextlib.asynccontextmanager
    async def make_pair() -> AsyncIterator[Pair]:
        nonlocal paired
        client = await dial(host.announced, code=None if paired else host.code)
        paired = True
        try:
            accepted = await asyncio.wait_for(host.queue.get(), 10)
        except BaseException:
            await _teardown(client)
            raise
        try:
            yield client, accepted
        finally:
            await _teardown(client, accepted)

    try:
        yield make_pair
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(host.close(), 5)


@contextlib.asynccontextmanager
async def store_memory() -> AsyncIterator[MakePair]:
    store = MemoryStore()
    params = StoreParams(window=16, rto_min=0.05, rto_initial=0.2)

    @contextlib.asynccontextmanager
    async def make_pair() -> AsyncIterator[Pair]:
        secret = os.urandom(32)
        server = StoreStream.open(store, secret, Role.LISTENER, params=params).connection
        client = StoreStream.open(store, secret, Role.DIALER, params=params).connection
        server.named("memory~stream", linger=5.0)
        client.named("memory~stream", linger=5.0)
        try:
            yield client, server
        finally:
            await _teardown(client, server)

    yield make_pair


@contextlib.asynccontextmanager
async def unix_shs() -> AsyncIterator[MakePair]:
    # a short directory: socket paths are limited to ~100 bytes
    with tempfile.TemporaryDirectory(prefix="kw-", dir="/tmp") as directory:
        async with served(f"unix:{directory}/c.sock~shs") as make_pair:
            yield make_pair


#: a check takes about a second here; a hang (a divergence) costs this long
TIMEOUT = 10.0
MUX = Capabilities(timeout=TIMEOUT)
SINGLE = Capabilities(multiplexed=False, stream_codes=False, close_codes=False, timeout=TIMEOUT)
KPS = Capabilities(datagrams=DatagramSupport(queue=256), timeout=TIMEOUT)

#: name → (how to start it, what it declares)
TRANSPORTS: dict[str, tuple[Callable[[], AbstractAsyncContextManager[MakePair]], Capabilities]] = {
    "mux-tcp": (mux_tcp, MUX),
    "mux-memory": (mux_memory, MUX),
    "net~shs~mux": (lambda: served("net:127.0.0.1:0~shs~mux"), MUX),
    "ws~shs~mux": (lambda: served("ws://127.0.0.1:0~shs~mux"), MUX),
    "kps-quic": (lambda: served("kps:127.0.0.1:0"), KPS),
    "kps-webrtc": (
        lambda: served("kps:127.0.0.1:0", {"webrtc.dial": True}),
        replace(KPS, bulk=256 * 1024),
    ),
    "webtransport": (lambda: served("webtransport:127.0.0.1:0"), KPS),
    "net~shs": (lambda: served("net:127.0.0.1:0~shs"), SINGLE),
    "net~noauth": (
        lambda: served("net:127.0.0.1:0~noauth"),
        replace(SINGLE, authenticated_eof=False),
    ),
    "unix~shs": (unix_shs, SINGLE),
    "ws~noauth": (lambda: served("ws://127.0.0.1:0~noauth"), SINGLE),
    "link": (link, replace(MUX, bulk=512 * 1024)),
    "store-memory": (
        store_memory,
        Capabilities(multiplexed=False, bulk=256 * 1024, max_buffered=4 << 20, timeout=TIMEOUT),
    ),
}


@pytest.fixture(scope="session", autouse=True)
def _stop_relay() -> Iterator[None]:
    yield
    if _relay is not None:
        _relay.kill()
        for pipe in (_relay.proc.stdout, _relay.proc.stderr):
            if pipe is not None:
                pipe.close()
