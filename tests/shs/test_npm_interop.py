"""Live interop with npm multiserver 3.8.2 + secret-handshake 1.1.21 (real Node processes).

The Node scripts live in tests/interop/npm; they read the full echo before ending their side
and so do these tests, because WebSocket has no half-close.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os

import pytest

import keywire
from keywire import DialError, Identity
from keywire.options import Options
from keywire.shs.steps import keypair_from_seed
from keywire.stream import Connection

from .npm import b64, node_client, node_server, payload

APP = hashlib.sha256(b"keywire npm interop").digest()
BIG = 16 * 1024 * 1024


async def echo(conn: Connection) -> None:
    async for stream in conn:
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.close_write()


async def exchange(address: str, data: bytes, **options: object) -> bytes:
    """Dial, send ``data``, read as many bytes back, then end with the goodbye."""
    conn = await keywire.dial(address, **options)  # type: ignore[arg-type]
    try:
        stream = await conn.open_stream()
        got = bytearray()

        async def send() -> None:
            await stream.write(data)

        sender = asyncio.ensure_future(send())
        while len(got) < len(data):
            chunk = await stream.read()
            assert chunk, f"EOF after {len(got)} of {len(data)} bytes"
            got += chunk
        await sender
        await stream.close_write()
        assert await stream.read() == b""  # the Node side's goodbye
        return bytes(got)
    finally:
        await conn.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["net", "ws"])
async def test_keywire_client_to_node_server(scheme: str) -> None:
    server_seed = os.urandom(32)
    me = Identity.generate()
    async with node_server(APP, server_seed) as node:
        data = payload(BIG)
        got = await exchange(node.alternative(scheme), data, identity=me, app_key=APP, timeout=30.0)
        assert got == data
        event = await node.wait_event("connect")
        assert event["remote"] == me.shs_id


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["net", "ws"])
async def test_node_client_to_keywire_server(scheme: str) -> None:
    options = Options(identity=Identity.generate(), app_key=APP)
    client_seed = os.urandom(32)
    seen: list[bytes | None] = []

    async def handler(conn: Connection) -> None:
        seen.append(conn.remote.public_key)
        await echo(conn)

    spec = "net:127.0.0.1:0~shs" if scheme == "net" else "ws://127.0.0.1:0~shs"
    async with keywire.Server(spec, options, handler=handler) as server:
        result = await node_client(server.address(), APP, client_seed, BIG)
    assert result["ok"], result
    assert result["bytes"] == BIG
    assert result["remote"] == options.need_identity().shs_id
    if scheme == "net":
        assert result["end"] is None  # our goodbye arrived: a clean, authenticated end
    # over ws the Node client closes the socket right after its own goodbye, which may beat
    # ours; ms_client.js reports that hangup in "end" once the whole echo was checked
    assert seen == [keypair_from_seed(client_seed)[0]]


@pytest.mark.timeout(30)
async def test_node_client_picks_the_first_alternative_it_understands() -> None:
    options = Options(identity=Identity.generate(), app_key=APP)
    async with keywire.Server(
        ["ws://127.0.0.1:0~shs", "net:127.0.0.1:0~shs"], options, handler=echo
    ) as server:
        address = server.address()
        assert address.startswith("ws://") and ";net:" in address
        # the unknown alternative is skipped, then the first known one (ws) is used
        result = await node_client(f"fake:x~nul:y;{address}", APP, os.urandom(32), 1000)
        assert result["ok"], result
        assert result["address"].startswith("ws://")
        # a client with only the net plug skips ws and takes net
        result = await node_client(
            f"fake:x~nul:y;{address}", APP, os.urandom(32), 1000, plugs="net"
        )
        assert result["ok"], result
        assert result["address"].startswith("net:")


@pytest.mark.timeout(30)
async def test_invite_seeds_both_ways() -> None:
    invite = os.urandom(32)
    invite_pk = b64(keypair_from_seed(invite)[0])
    async with node_server(APP, os.urandom(32)) as node:
        address = f"{node.alternative('net')}:{b64(invite)}"
        assert await exchange(address, b"invite", app_key=APP) == b"invite"
        assert (await node.wait_event("connect"))["remote"] == invite_pk
    seen: list[bytes | None] = []

    async def handler(conn: Connection) -> None:
        seen.append(conn.remote.public_key)
        await echo(conn)

    options = Options(identity=Identity.generate(), app_key=APP)
    async with keywire.Server("net:127.0.0.1:0~shs", options, handler=handler) as server:
        result = await node_client(f"{server.address()}:{b64(invite)}", APP, os.urandom(32), 10)
    assert result["ok"], result
    assert seen == [keypair_from_seed(invite)[0]]


@pytest.mark.timeout(30)
async def test_wrong_app_key_fails_clearly_on_both_sides(caplog: pytest.LogCaptureFixture) -> None:
    other_app = os.urandom(32)
    async with node_server(APP, os.urandom(32)) as node:
        with pytest.raises(DialError, match=r"phase 1.*application cap"):
            await keywire.dial(
                node.alternative("net"), identity=Identity.generate(), app_key=other_app
            )
        error = await node.wait_event("error")
        assert "challenge" in error["message"]
    caplog.set_level(logging.DEBUG, logger="keywire")
    options = Options(identity=Identity.generate(), app_key=APP)
    async with keywire.Server("net:127.0.0.1:0~shs", options, handler=echo) as server:
        result = await node_client(server.address(), other_app, os.urandom(32), 10, timeout=15)
        assert not result["ok"] and result["exit"] != 0
        assert "phase 1" in result["error"]
        assert server.stats.failed_handshakes == 1
    assert "challenge is invalid (phase 1)" in caplog.text


@pytest.mark.timeout(30)
async def test_wrong_server_key_fails_clearly_on_both_sides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong_key = b64(keypair_from_seed(os.urandom(32))[0])
    async with node_server(APP, os.urandom(32)) as node:
        transport = node.alternative("net").split("~")[0]
        with pytest.raises(DialError, match=r"phase 3.*wrong server key"):
            await keywire.dial(
                f"{transport}~shs:{wrong_key}", identity=Identity.generate(), app_key=APP
            )
        error = await node.wait_event("error")
        assert "hello" in error["message"]
    caplog.set_level(logging.DEBUG, logger="keywire")
    options = Options(identity=Identity.generate(), app_key=APP)
    async with keywire.Server("net:127.0.0.1:0~shs", options, handler=echo) as server:
        transport = server.address().split("~")[0]
        result = await node_client(
            f"{transport}~shs:{wrong_key}", APP, os.urandom(32), 10, timeout=15
        )
        assert not result["ok"] and result["exit"] != 0
        assert "phase 3" in result["error"]
    assert "dialed a wrong number" in caplog.text


@pytest.mark.timeout(30)
async def test_node_server_refusing_us() -> None:
    allowed = Identity.generate()
    async with node_server(APP, os.urandom(32), allow=allowed.shs_id) as node:
        with pytest.raises(DialError, match=r"phase 3.*does not authorize us"):
            await keywire.dial(
                node.alternative("net"),
                identity=Identity.generate(),
                app_key=base64.b64encode(APP).decode(),
            )
        assert (await node.wait_event("auth"))["allowed"] is False
        assert (
            await exchange(node.alternative("net"), b"ok", identity=allowed, app_key=APP) == b"ok"
        )
