"""A hostile relay that records and tampers: it learns nothing and can break nothing quietly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.frames import Opcode

from keywire.errors import ConnectionClosed, StreamError
from keywire.link import client
from keywire.link.relay.config import RelayConfig
from keywire.link.relay.server import RelayServer, _Socket
from keywire.link.store import ClientStore
from keywire.link.wire import b64u

from .helpers import EchoHost, dial, echo_once
from .rawclient import RawHost, close_code, recv, registered_host, send, ws

pytestmark = pytest.mark.timeout(30)
SECRET = b"attack at dawn, the plaintext nobody may see"


class RecordingRelay(RelayServer):
    """Records every frame it forwards or reads; can flip a bit in the Nth spliced frame."""

    def __init__(self, config: RelayConfig) -> None:
        super().__init__(config)
        self.recorded: list[bytes] = []
        self.control_frames: list[str] = []
        self.tamper_at: int | None = None
        self.spliced_count = 0

    def message(self, sock: _Socket, opcode: Opcode, data: bytes) -> None:
        if sock.id in self._ends:
            self.spliced_count += 1
            if self.tamper_at is not None and self.spliced_count == self.tamper_at:
                data = bytes([data[0] ^ 0x40]) + data[1:]
            self.recorded.append(data)
        elif opcode is Opcode.TEXT:
            self.control_frames.append(data.decode())
        super().message(sock, opcode, data)


async def start_relay() -> tuple[RecordingRelay, str]:
    relay = RecordingRelay(RelayConfig(host="127.0.0.1", port=0))
    port = await relay.start()
    return relay, f"ws://127.0.0.1:{port}/v1/link"


async def test_recording_holds_no_plaintext_and_no_code(tmp_path: Path) -> None:
    relay, url = await start_relay()
    host = await EchoHost([url], tmp_path / "host").start()
    try:
        assert host.code is not None
        conn = await dial(host.announced, code=host.code)
        assert await echo_once(conn, SECRET * 50) == SECRET * 50
        await conn.close()
        again = await dial(host.announced)
        assert await echo_once(again, SECRET) == SECRET
        await again.close()
        credential = ClientStore().get(host.host.address)
        assert credential is not None
        blob = b"".join(relay.recorded) + "".join(relay.control_frames).encode()
        assert len(relay.recorded) > 10
        for needle in (
            SECRET[:16],
            host.code.encode(),
            host.code.replace("-", "").encode(),
            credential.token,
            b64u(credential.token).encode(),
        ):
            assert needle not in blob
    finally:
        await host.close()
        await relay.stop(grace=1)


@pytest.mark.parametrize("frame_index", [1, 2, 3, 5, 8])
async def test_any_tampering_ends_the_session(tmp_path: Path, frame_index: int) -> None:
    relay, url = await start_relay()
    host = await EchoHost([url], tmp_path / "host").start()
    try:
        assert host.code is not None
        await client.pair(host.announced, host.code)
        relay.spliced_count = 0
        relay.tamper_at = frame_index
        with pytest.raises(
            (
                StreamError,
                ConnectionClosed,
                client.HandshakeError,
                asyncio.IncompleteReadError,
                TimeoutError,
            )
        ):
            conn = await dial(host.announced)
            for _ in range(4):
                await echo_once(conn, b"x" * 100)
    finally:
        await host.close()
        await relay.stop(grace=1)


async def test_replayed_register_is_refused_even_after_disconnect(tmp_path: Path) -> None:
    relay, url = await start_relay()
    try:
        host = RawHost()
        captured = host.register(url)
        control = await ws(url)
        await send(control, captured)
        assert (await recv(control))["type"] == "registered"
        await control.close()
        await asyncio.sleep(0.2)
        replay = await ws(url)
        await replay.send(json.dumps(captured))
        assert await recv(replay) == {"type": "error", "error": "register_stale"}
        await replay.close()
        fresh = await ws(url)
        await send(fresh, host.register(url))  # the real host, newer ts: fine
        assert (await recv(fresh))["type"] == "registered"
        await fresh.close()
    finally:
        await relay.stop(grace=1)


async def test_third_party_cannot_take_the_host_end(tmp_path: Path) -> None:
    relay, url = await start_relay()
    try:
        host, control = await registered_host(url)
        victim = await ws(url)
        await send(victim, {"type": "resolve", "address": host.address})
        link_id = (await recv(victim))["linkId"]
        await recv(control)  # arrived
        await send(victim, {"type": "relay", "linkId": link_id})
        ticket = (await recv(control))["ticket"]
        for forged in (
            {"type": "accept", "linkId": link_id},
            {"type": "accept", "linkId": link_id, "ticket": "guess"},
        ):
            thief = await ws(url)
            await send(thief, forged)
            assert await close_code(thief) == 4007
        real = await ws(url)
        await send(real, {"type": "accept", "linkId": link_id, "ticket": ticket})
        assert (await recv(real))["type"] == "relaying"
        for sock in (control, victim, real):
            await sock.close()
    finally:
        await relay.stop(grace=1)
