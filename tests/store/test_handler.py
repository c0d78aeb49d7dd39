"""Addresses ``http://…~stream:SECRET`` / ``redis://…~stream:SECRET`` through keywire.dial and
keywire.Server, and the secret's validation."""

from __future__ import annotations

import asyncio

import pytest

import keywire
from keywire.address import parse, parse_alternative
from keywire.errors import AddressError, DialError
from keywire.options import Options
from keywire.registry import registry
from keywire.store import MapServer, format_secret, generate_secret, parse_secret
from keywire.store.handler import StoreStreamHandler, stream_secret

from .conftest import RedisProcess, random_bytes

OPTIONS = Options(extra={"store.linger": 5.0})


def test_store_handler_is_built_in() -> None:
    alt = parse_alternative("redis://127.0.0.1:1/0~stream:" + format_secret(bytes(32)))
    assert isinstance(registry.handler_for(alt), StoreStreamHandler)


def test_claims_only_store_chains() -> None:
    handler = StoreStreamHandler()
    secret = format_secret(bytes(32))
    for text in (
        f"http://h:1~stream:{secret}",
        f"https://h/p~stream:{secret}",
        f"redis://h:6379/2~stream:{secret}",
        f"rediss://h~stream:{secret}",
        "redis://h:6379/0~stream",
    ):
        assert handler.claims(parse_alternative(text)), text
    for text in (
        "ws://h:1~shs:x",
        "net:h:1~stream:x",
        "http://h:1~shs:x",
        f"redis://h~stream:{secret}~mux",
    ):
        assert not handler.claims(parse_alternative(text)), text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("redis://h/0~stream", "':SECRET' after 'stream'"),
        ("redis://h/0~stream:abc", "at least 32"),
        ("redis://h/0~stream:" + "A" * 42 + "*", "not base64"),
        ("redis://h/0~stream:a:b", "exactly one argument"),
    ],
)
def test_bad_secrets_are_address_errors(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        stream_secret(parse_alternative(text), required=True)


async def test_dial_reports_a_bad_secret() -> None:
    with pytest.raises(DialError, match="at least 32"):
        await keywire.dial("http://127.0.0.1:9~stream:c2hvcnQ", OPTIONS)


async def exchange_through(listen_spec: str) -> None:
    server = keywire.Server([listen_spec], OPTIONS)
    await server.start()
    try:
        address = server.address()
        alt = parse(address).alternatives[0]
        assert alt.names[1] == "stream"
        secret = parse_secret(alt.sections[1].args[0])  # a fresh one was made
        assert len(secret) == 32

        async def serve() -> None:
            conn = await server.__aiter__().__anext__()
            stream = await conn.accept_stream()
            data = await stream.read_all()
            await stream.write(data[::-1])
            await stream.close_write()
            await conn.close()

        serving = asyncio.ensure_future(serve())
        conn = await keywire.dial(address, OPTIONS)
        stream = await conn.open_stream()
        payload = random_bytes(300_000, 1)
        async with asyncio.timeout(20):
            await stream.write(payload)
            await stream.close_write()
            assert await stream.read_all() == payload[::-1]
            await conn.close()
            await serving
    finally:
        await server.close()


async def test_listen_and_dial_over_the_map_server() -> None:
    async with MapServer() as map_server:
        await exchange_through(f"{map_server.url}~stream")


async def test_listen_and_dial_over_redis(redis_server: RedisProcess) -> None:
    await exchange_through(f"{redis_server.url}~stream")


async def test_listener_with_a_given_secret_announces_it() -> None:
    secret = generate_secret()
    async with MapServer() as map_server:
        spec = f"{map_server.url}~stream:{format_secret(secret)}"
        server = keywire.Server([spec], OPTIONS)
        await server.start()
        try:
            assert server.address() == spec
        finally:
            await server.close()


def test_keywire_listen_and_dial_commands() -> None:
    """``keywire listen URL~stream`` prints the address with a fresh secret; ``keywire dial``
    pipes stdin through it (echoed) and exits 0 once the listener ends its side."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve()
    env = dict(os.environ, PYTHONPATH=str(here.parents[2] / "src"))
    cli = [sys.executable, "-m", "keywire"]
    mapper = subprocess.Popen(
        [*cli, "map-server", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    listener = None
    try:
        assert mapper.stdout is not None
        url = mapper.stdout.readline().decode().strip()
        listener = subprocess.Popen(
            [*cli, "listen", f"{url}~stream", "--echo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert listener.stdout is not None
        address = listener.stdout.readline().decode().strip()
        assert address.startswith(f"{url}~stream:") and len(address) > len(url) + 40
        done = subprocess.run(
            [*cli, "dial", address],
            input=b"through the store\n",
            capture_output=True,
            env=env,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == b"through the store\n"
    finally:
        for proc in (listener, mapper):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
