"""Talking to a relay as a host or a client: connect, control frames, and the introduction.

Thin asyncio helpers shared by ``client`` and ``host``; they speak Link's JSON control frames
and turn the relay's errors and close codes into messages a person can act on.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidHandshake, InvalidURI

from ..errors import HandshakeError
from .session import describe_close
from .wire import b64u, json_object, origin_of, register_signing_message

MAX_MESSAGE = 1 << 20


class RelayError(HandshakeError):
    """The relay refused or dropped us before the session started."""


async def open_socket(url: str, timeout: float) -> ClientConnection:
    try:
        return await connect(
            url,
            open_timeout=timeout,
            max_size=MAX_MESSAGE,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
            max_queue=16,
        )
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise RelayError(f"cannot reach relay {url}: {exc or type(exc).__name__}") from None


async def send_json(ws: ClientConnection, message: dict[str, Any]) -> None:
    try:
        await ws.send(json.dumps(message, separators=(",", ":")))
    except WsClosed as exc:
        raise RelayError(describe_close(exc)) from None


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    """The next control frame; relay ``error`` frames and closes become ``RelayError``."""
    try:
        raw = await ws.recv()
    except WsClosed as exc:
        raise RelayError(describe_close(exc)) from None
    if not isinstance(raw, str):
        raise RelayError("the relay sent a binary frame before relaying")
    message = json_object(raw)
    if message is None:
        raise RelayError("the relay sent a control frame that is not a JSON object")
    return message


async def expect(ws: ClientConnection, kind: str, what: str) -> dict[str, Any]:
    while True:
        message = await recv_json(ws)
        if message.get("type") == kind:
            return message
        if message.get("type") == "error":
            raise RelayError(f"{what}: relay error {message.get('error')!r}")
        if message.get("type") in ("usage", "arrived"):
            continue
        raise RelayError(f"{what}: unexpected relay message {message.get('type')!r}")


async def introduce(url: str, address: str, timeout: float) -> ClientConnection:
    """Client side: resolve the host, ask for a relay, and wait until the splice is live."""
    ws = await open_socket(url, timeout)
    try:
        await send_json(ws, {"type": "resolve", "address": address})
        found = await expect(ws, "found", f"resolving {address[:12]}… on {url}")
        await send_json(ws, {"type": "relay", "linkId": found["linkId"]})
        await expect(ws, "relaying", f"waiting for host {address[:12]}… on {url}")
    except BaseException:
        await ws.close()
        raise
    return ws


def register_message(
    signer: Ed25519PrivateKey, address: str, url: str, ts: int | None = None
) -> dict[str, Any]:
    """A signed ``register`` for ``address`` on the relay at ``url`` (its origin is signed)."""
    pub = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    stamp = ts if ts is not None else int(time.time() * 1000)
    nonce = b64u(secrets.token_bytes(16))
    sig = signer.sign(register_signing_message(address, stamp, nonce, origin_of(url)))
    return {
        "type": "register",
        "address": address,
        "auth": {"alg": "ed25519", "pub": b64u(pub), "ts": stamp, "nonce": nonce, "sig": b64u(sig)},
    }
