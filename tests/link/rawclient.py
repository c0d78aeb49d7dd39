"""Raw relay clients for protocol-level tests: a signed host control socket and a resolver."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import ClientConnection, connect

from keywire.link.relayconn import register_message
from keywire.link.wire import address_for_register_key, b64u


class RawHost:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.address = address_for_register_key(self.pub)
        self.pub_b64u = b64u(self.pub)

    def register(
        self, url: str, ts: int | None = None, origin_url: str | None = None
    ) -> dict[str, Any]:
        return register_message(self.key, self.address, origin_url or url, ts)


async def ws(url: str, **kwargs: Any) -> ClientConnection:
    return await connect(url, compression=None, **kwargs)


async def send(sock: ClientConnection, message: dict[str, Any]) -> None:
    await sock.send(json.dumps(message))


async def recv(sock: ClientConnection) -> dict[str, Any]:
    data = await sock.recv()
    assert isinstance(data, str)
    result: dict[str, Any] = json.loads(data)
    return result


async def close_code(sock: ClientConnection) -> int | None:
    """Wait for the relay to close ``sock``; its close code."""
    try:
        while True:
            await sock.recv()
    except Exception:
        pass
    return sock.close_code


async def registered_host(url: str) -> tuple[RawHost, ClientConnection]:
    host = RawHost()
    control = await ws(url)
    await send(control, host.register(url))
    assert (await recv(control))["type"] == "registered"
    return host, control


async def spliced(url: str) -> tuple[ClientConnection, ClientConnection, ClientConnection]:
    """(host control, client end, host end) of one relaying link."""
    host, control = await registered_host(url)
    client = await ws(url)
    await send(client, {"type": "resolve", "address": host.address})
    found = await recv(client)
    assert (await recv(control))["type"] == "arrived"
    await send(client, {"type": "relay", "linkId": found["linkId"]})
    relay = await recv(control)
    host_end = await ws(url)
    await send(host_end, {"type": "accept", "linkId": relay["linkId"], "ticket": relay["ticket"]})
    assert (await recv(host_end))["type"] == "relaying"
    assert (await recv(client))["type"] == "relaying"
    return control, client, host_end
