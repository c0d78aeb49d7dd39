"""``Connection.close()`` never throws away written data, on every transport.

For each transport: one side opens a stream, writes N bytes (N in 0, 1, 3 MB), calls
``conn.close()`` at once (with and without ``close_write`` first) and the peer must read exactly
those N bytes and then EOF. The same runs the other way round (the listener's side writes and
closes), which is what ``keywire listen --stdio`` does. A close with nothing queued returns
promptly, and ``abort`` ends the peer's reads with an error, never with a clean EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

import keywire
from keywire.errors import ConnectionClosed, StreamError
from keywire.mux.connection import PEER_END_GRACE, MuxConnection
from keywire.options import Options
from keywire.pipe import StreamPipe
from keywire.store import MemoryStore, Role, StoreParams, StoreStream
from keywire.store.mapserver import MapServer
from keywire.stream import Connection

from ..link.conftest import RelayProcess
from ..link.helpers import EchoHost, dial

SIZES = {"0B": 0, "1B": 1, "3MB": 3_000_000}
#: bounds one whole transfer (set-up, 3 MB, close, checks); WebRTC and the store are slowest
TRANSFER_TIMEOUT = 45.0


@dataclass
class Pair:
    """Both ends of one connection: ``dialer`` dialed it, ``listener`` accepted it."""

    dialer: Connection
    listener: Connection


PairMaker = Callable[[Path], AbstractAsyncContextManager[Pair]]


@contextlib.asynccontextmanager
async def served(spec: str, **overrides: object) -> AsyncIterator[Pair]:
    """A ``keywire.Server`` on ``spec``, one dial to it and the accepted connection."""
    async with keywire.Server([spec]) as server:
        dialer = await keywire.dial(server.address(), **overrides)  # type: ignore[arg-type]
        try:
            listener = await asyncio.wait_for(server.accept(), 10)
            yield Pair(dialer, listener)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dialer.abort(), 5)


def chain(spec: str, **overrides: object) -> PairMaker:
    return lambda tmp: served(spec.format(tmp=tmp), **overrides)


class _Handing(EchoHost):
    """A Link host that hands each connection to the test instead of echoing it."""

    def __init__(self, urls: list[str], store: Path) -> None:
        super().__init__(urls, store)
        self.queue: asyncio.Queue[Connection] = asyncio.Queue()

    async def _serve(self, conn: Connection) -> None:
        self.connections.append(conn)
        await self.queue.put(conn)
        await conn.wait_closed()


@contextlib.asynccontextmanager
async def link_pair(tmp: Path) -> AsyncIterator[Pair]:
    relay = RelayProcess()
    host = _Handing([relay.url], tmp / "host")
    try:
        await host.start()
        dialer = await dial(host.announced, code=host.code)
        listener = await asyncio.wait_for(host.queue.get(), 10)
        try:
            yield Pair(dialer, listener)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dialer.abort(), 5)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(host.close(), 5)
        relay.kill()
        for pipe in (relay.proc.stdout, relay.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.asynccontextmanager
async def store_memory_pair(tmp: Path) -> AsyncIterator[Pair]:
    store = MemoryStore()
    secret = random.Random(7).randbytes(32)
    params = StoreParams(window=16, rto_min=0.05, rto_initial=0.2)
    listener = StoreStream.open(store, secret, Role.LISTENER, params=params).connection
    dialer = StoreStream.open(store, secret, Role.DIALER, params=params).connection
    try:
        yield Pair(dialer, listener)
    finally:
        for conn in (dialer, listener):
            await conn.abort()


@contextlib.asynccontextmanager
async def store_map_pair(tmp: Path) -> AsyncIterator[Pair]:
    mapserver = MapServer(max_value=1 << 16)
    await mapserver.start()
    try:
        url = f"http://127.0.0.1:{mapserver.port}"
        async with served(f"{url}~stream") as pair:
            yield pair
    finally:
        await mapserver.close()


TRANSPORTS: dict[str, PairMaker] = {
    "net~shs": chain("net:127.0.0.1:0~shs"),
    "net~shs~mux": chain("net:127.0.0.1:0~shs~mux"),
    "ws~shs~mux": chain("ws://127.0.0.1:0~shs~mux"),
    "ws~noauth": chain("ws://127.0.0.1:0~noauth"),
    "unix~shs": chain("unix:{tmp}/kw.sock~shs"),
    "kps-quic": chain("kps:127.0.0.1:0"),
    "kps-webrtc": chain("kps:127.0.0.1:0", options=Options(extra={"webrtc.dial": True})),
    "link": link_pair,
    "store-memory": store_memory_pair,
    "store-map": store_map_pair,
}


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def send_then_close(
    sender: Connection, receiver: Connection, data: bytes, close_write_first: bool
) -> tuple[bytes, float]:
    """Write ``data`` on a new stream of ``sender``, close the connection at once; the peer's
    whole read (EOF included) and how long ``close`` took."""

    async def receive() -> bytes:
        stream = await receiver.accept_stream()
        return await stream.read_all()

    got = asyncio.ensure_future(receive())
    try:
        stream = await sender.open_stream()
        if data:
            await stream.write(data)
        if close_write_first:
            await stream.close_write()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sender.close()
        took = loop.time() - started
        return await got, took
    finally:
        got.cancel()


@pytest.mark.timeout(TRANSFER_TIMEOUT + 15)
@pytest.mark.parametrize("close_write_first", [False, True], ids=["close", "fin-then-close"])
@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_close_delivers_everything(
    transport: str, size: int, close_write_first: bool, tmp_path: Path
) -> None:
    data = payload(size)
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        async with TRANSPORTS[transport](tmp_path) as pair:
            got, _ = await send_then_close(pair.dialer, pair.listener, data, close_write_first)
    assert len(got) == size and got == data


@pytest.mark.timeout(TRANSFER_TIMEOUT + 15)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_listener_side_close_delivers_everything(transport: str, tmp_path: Path) -> None:
    """The ``listen --stdio`` direction: the accepting side writes and closes."""
    data = payload(SIZES["3MB"])
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        async with TRANSPORTS[transport](tmp_path) as pair:
            got, _ = await send_then_close(pair.listener, pair.dialer, data, False)
    assert len(got) == len(data) and got == data


@pytest.mark.timeout(TRANSFER_TIMEOUT + 15)
@pytest.mark.parametrize("transport", [t for t in TRANSPORTS if not t.startswith("store")])
async def test_close_with_nothing_queued_is_prompt(transport: str, tmp_path: Path) -> None:
    """Once the peer has everything, ``close`` adds no fixed linger."""
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        async with TRANSPORTS[transport](tmp_path) as pair:
            stream = await pair.dialer.open_stream()
            await stream.write(b"ping")
            peer = await pair.listener.accept_stream()
            assert await peer.readexactly(4) == b"ping"
            await peer.write(b"pong")
            assert await stream.readexactly(4) == b"pong"
            await asyncio.sleep(0.2)  # acknowledgements of the last bytes arrive
            loop = asyncio.get_running_loop()
            started = loop.time()
            await pair.dialer.close()
            took = loop.time() - started
    print(f"close of an idle {transport} connection: {took * 1000:.1f} ms")
    assert took < 0.2, f"close took {took:.3f} s with nothing queued"


@pytest.mark.timeout(TRANSFER_TIMEOUT + 15)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_abort_is_never_a_clean_eof(transport: str, tmp_path: Path) -> None:
    """``abort`` is immediate: our later calls fail at once and the peer's read ends with an
    error, never EOF (a store stream writes nothing more on abort, so its peer hears nothing)."""
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        async with TRANSPORTS[transport](tmp_path) as pair:
            stream = await pair.dialer.open_stream()
            await stream.write(b"x")
            peer = await pair.listener.accept_stream()
            assert await peer.readexactly(1) == b"x"
            await stream.write(payload(100_000))
            await pair.dialer.abort()
            assert pair.dialer.closed
            with pytest.raises((StreamError, ConnectionClosed)):
                await stream.write(b"after abort")
            if transport.startswith("store"):
                return
            with pytest.raises((StreamError, ConnectionClosed)):
                await peer.read_all()


@pytest.mark.timeout(TRANSFER_TIMEOUT + 15)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_close_with_unread_input_delivers_everything(transport: str, tmp_path: Path) -> None:
    """The peer sent bytes the closing side never reads and reads our bytes only later: the
    close must neither cut our tail off (a socket closed with unread input answers with RST)
    nor wait for the peer's application."""
    data = payload(SIZES["3MB"])
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        async with TRANSPORTS[transport](tmp_path) as pair:
            stream = await pair.dialer.open_stream()
            await stream.write(data[:1])
            peer = await pair.listener.accept_stream()
            await peer.write(payload(65_536))  # never read by the closing side
            late = asyncio.ensure_future(asyncio.sleep(0.3))
            writing = asyncio.ensure_future(stream.write(data[1:]))
            await late
            got = asyncio.ensure_future(peer.read_all())
            await writing
            await pair.dialer.close()
            assert await got == data


@pytest.mark.timeout(TRANSFER_TIMEOUT + 15)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_close_during_a_blocked_write_is_never_a_clean_eof(
    transport: str, tmp_path: Path
) -> None:
    """A write still waiting for credit when ``close()`` is called fails, and its stream is
    reset: the peer reads a prefix and then an error, never a truncated stream and EOF."""
    # more than every buffer on the way holds (websockets queues 16 MiB of messages itself)
    data = payload(64_000_000 if transport == "ws~noauth" else 24_000_000)
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        async with TRANSPORTS[transport](tmp_path) as pair:
            stream = await pair.dialer.open_stream()
            await stream.write(data[:1])
            peer = await pair.listener.accept_stream()
            writing = asyncio.ensure_future(stream.write(data[1:]))
            await asyncio.sleep(0.3)
            assert not writing.done(), "the peer reads nothing: this write must be waiting"
            closing = asyncio.ensure_future(pair.dialer.close())
            got = bytearray()
            with pytest.raises((StreamError, ConnectionClosed)):
                async for chunk in peer:
                    got += chunk
            assert bytes(got) == data[: len(got)] and len(got) < len(data)
            with pytest.raises((StreamError, ConnectionClosed)):
                await writing
            await closing


@pytest.mark.timeout(20)
async def test_mux_close_against_a_peer_that_never_ends_its_half_is_bounded() -> None:
    """A plain yamux peer may stay after our GoAway: once its kernel acknowledged everything,
    the close waits ``PEER_END_GRACE`` for its end, not the whole ``close_timeout``."""
    received = bytearray()
    held: list[asyncio.StreamWriter] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads everything, never closes
        while chunk := await reader.read(65536):
            received.extend(chunk)

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = MuxConnection(StreamPipe(reader, writer), client=True, address="sink~mux")
        stream = await conn.open_stream()
        await stream.write(b"tail" * 1000)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await conn.close()
        took = loop.time() - started
        assert PEER_END_GRACE <= took < PEER_END_GRACE + 1.0 < conn.close_timeout
        assert b"tail" * 1000 in received
    finally:
        for held_writer in held:
            held_writer.close()
        server.close()
