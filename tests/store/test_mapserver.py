"""The HTTP map server: its protocol, limits, persistence, robustness, and streams over it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.store import HttpStore, LossyStore, MapServer, Role, StoreParams, StoreStream
from keywire.store.backends.backend import StoreError, ValueTooLarge
from keywire.store.mapserver.http1 import HttpError, parse_request_head, parse_response_head

from .conftest import random_bytes
from .test_stream_memory import MB8, SECRET, exchange, send_all

ADDR = bytes(range(32))
FAST = dict(rto_min=0.05, rto_initial=0.2)


async def raw(server: MapServer, request: bytes, *, read_all: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            if read_all:
                return await reader.read(1 << 20)
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_put_get_and_miss(map_server: MapServer) -> None:
    client = HttpStore(map_server.url)
    try:
        assert await client.get(ADDR, 0) is None
        await client.put(ADDR, b"value")
        assert await client.get(ADDR, 0) == b"value"
        await client.put(ADDR, b"overwritten")
        assert await client.get(ADDR, 5) == b"overwritten"
    finally:
        await client.close()


async def test_long_poll_get_is_woken_by_a_put(map_server: MapServer) -> None:
    client = HttpStore(map_server.url)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        waiting = asyncio.ensure_future(client.get(ADDR, 10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await client.put(ADDR, b"late")
        assert await asyncio.wait_for(waiting, 5) == b"late"
        assert loop.time() - start < 3
        start = loop.time()
        assert await client.get(bytes(32), 0.3) is None  # times out as asked
        assert 0.25 < loop.time() - start < 3
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"PUT /v1/abcd HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"PUT /v1/" + b"zz" * 32 + b" HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"PUT /v1/" + b"00" * 32 + b" HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", 413),
        (b"PUT /v1/" + b"00" * 32 + b" HTTP/1.1\r\n\r\n", 411),
        (b"PUT /v1/" + b"00" * 32 + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"PUT /v1/" + b"00" * 32 + b" HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),
        (b"DELETE /v1/" + b"00" * 32 + b" HTTP/1.1\r\n\r\n", 405),
        (b"GET /v1/" + b"00" * 32 + b"?wait=soon HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/" + b"00" * 32 + b"?wait=-1 HTTP/1.1\r\n\r\n", 400),
        (b"GET /other HTTP/1.1\r\n\r\n", 404),
        (b"GET /v1/" + b"00" * 32 + b" HTTP/9.9\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
    ],
)
async def test_bad_requests_get_clear_statuses(
    map_server: MapServer, request_bytes: bytes, expected: int
) -> None:
    response = await raw(map_server, request_bytes)
    assert status(response) == expected
    # the server is still fine
    assert status(await raw(map_server, b"GET /v1 HTTP/1.1\r\n\r\n")) == 200


async def test_oversized_put_is_refused_before_its_body_is_read(map_server: MapServer) -> None:
    client = HttpStore(map_server.url, max_value=1 << 20)
    try:
        with pytest.raises(ValueTooLarge):
            await client.put(ADDR, b"x" * (map_server.table.max_value + 1))
        assert await client.get(ADDR, 0) is None
    finally:
        await client.close()


async def test_waiting_gets_are_bounded() -> None:
    async with MapServer(max_waiters=3) as server:
        client = HttpStore(server.url)
        try:
            waiting = [asyncio.ensure_future(client.get(bytes([i]) * 32, 5)) for i in range(3)]
            await asyncio.sleep(0.2)
            assert server.table.waiting == 3
            with pytest.raises(StoreError, match="503"):
                await client.get(b"\x09" * 32, 5)
            await client.put(bytes([1]) * 32, b"one")
            assert await asyncio.wait_for(waiting[1], 5) == b"one"
            for task in waiting:
                task.cancel()
        finally:
            await client.close()


async def test_ttl_and_byte_budget() -> None:
    async with MapServer(ttl=0.3, max_value=100, max_bytes=250) as server:
        client = HttpStore(server.url, max_value=100)
        try:
            await client.put(b"\x01" * 32, b"a" * 100)
            await client.put(b"\x02" * 32, b"b" * 100)
            with pytest.raises(StoreError, match="507"):
                await client.put(b"\x03" * 32, b"c" * 100)
            await asyncio.sleep(0.4)
            assert await client.get(b"\x01" * 32, 0) is None  # expired
            await client.put(b"\x03" * 32, b"c" * 100)  # room again
        finally:
            await client.close()


async def test_sqlite_keeps_entries_across_restarts(tmp_path: Path) -> None:
    db = tmp_path / "map.db"
    async with MapServer(db=db) as first:
        client = HttpStore(first.url)
        await client.put(ADDR, b"persisted")
        await client.close()
        port = first.port
    async with MapServer(port=port, db=db) as second:
        client = HttpStore(second.url)
        assert await client.get(ADDR, 0) == b"persisted"
        await client.close()


async def test_garbage_on_the_socket_does_not_hurt_the_server(map_server: MapServer) -> None:
    rng = random_bytes(20000, 5)
    for i in range(20):
        _, writer = await asyncio.open_connection("127.0.0.1", map_server.port)
        writer.write(rng[i * 1000 : (i + 1) * 1000] + b"\r\n\r\n")
        writer.close()
    huge = b"GET / HTTP/1.1\r\nX: " + b"y" * 100_000 + b"\r\n\r\n"
    response = await raw(map_server, huge)
    assert response == b"" or status(response) in (400, 431)
    client = HttpStore(map_server.url)
    await client.put(ADDR, b"still serving")
    assert await client.get(ADDR, 0) == b"still serving"
    await client.close()


@given(st.binary(max_size=600))
@settings(max_examples=800, deadline=None)
def test_request_head_parser_only_raises_http_errors(head: bytes) -> None:
    try:
        parsed = parse_request_head(head)
    except HttpError as exc:
        assert 400 <= exc.status < 600 and exc.message
    else:
        assert parsed.path.startswith("/")


@given(
    st.lists(
        st.sampled_from(
            [
                b"GET",
                b"PUT",
                b" ",
                b"/v1/",
                b"00" * 32,
                b"?wait=",
                b"1",
                b"HTTP/1.1",
                b"\r\n",
                b"Content-Length:",
                b"5",
                b"Connection: close",
                b"x:y",
                b":",
            ]
        ),
        max_size=20,
    )
)
@settings(max_examples=800, deadline=None)
def test_request_head_parser_on_near_misses(parts: list[bytes]) -> None:
    try:
        parse_request_head(b"".join(parts))
    except HttpError:
        pass


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_response_head_parser_only_raises_http_errors(head: bytes) -> None:
    try:
        parse_response_head(head)
    except HttpError:
        pass


async def test_8mb_each_way_over_http_with_loss(map_server: MapServer) -> None:
    a = LossyStore(
        HttpStore(map_server.url), put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=21
    )
    b = LossyStore(
        HttpStore(map_server.url), put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=22
    )
    try:
        await exchange(a, b, StoreParams(window=16, value_size=65536, **FAST), MB8, 40)
        assert a.dropped > 20 and b.dropped > 20
    finally:
        await a.close()
        await b.close()


async def test_map_server_restart_mid_stream(tmp_path: Path) -> None:
    """Half the data is through, the server stops while the rest is written, and a new one
    starts on the same port and SQLite file: the stream completes byte for byte."""
    db = tmp_path / "map.db"
    server = await MapServer(db=db).start()
    port = server.port
    client_a, client_b = HttpStore(server.url), HttpStore(server.url)
    params = StoreParams(window=8, **FAST)
    a = StoreStream.open(client_a, SECRET, Role.LISTENER, params=params)
    b = StoreStream.open(client_b, SECRET, Role.DIALER, params=params)
    data = random_bytes(2_000_000, 8)
    try:
        receiving = asyncio.ensure_future(b.read_all())
        await a.write(data[:1_000_000])
        async with asyncio.timeout(20):
            while b.core.bytes_read < 900_000:
                await asyncio.sleep(0.01)
        await server.close()  # down mid-stream
        sending = asyncio.ensure_future(send_all(a, data[1_000_000:], chunk=50_000))
        await asyncio.sleep(0.7)
        assert not receiving.done()
        server = await MapServer(port=port, db=db).start()  # back, with its entries
        async with asyncio.timeout(30):
            await sending
            assert await receiving == data
        assert any("cannot connect" in t.reason for t in a.troubles)
    finally:
        await a.abort()
        await b.abort()
        await client_a.close()
        await client_b.close()
        await server.close()


def test_cli_prints_the_url_first(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keywire.store.mapserver",
            "map-server",
            "--port",
            "0",
            "--db",
            str(tmp_path / "m.db"),
            "--ttl",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("http://127.0.0.1:")

        async def use() -> None:
            client = HttpStore(line)
            await client.put(ADDR, b"via the cli")
            assert await client.get(ADDR, 0) == b"via the cli"
            await client.close()

        asyncio.run(use())
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
