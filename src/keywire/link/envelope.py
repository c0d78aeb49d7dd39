"""Link's application envelope (request / response / event), for peers that speak it.

A plaintext is legacy JSON (first byte ``{``) or framed: ``0x01 ‖ u32be metaLen ‖ meta JSON ‖
payload``. Each side first sends ``{"t":"cap","env":[1]}`` and may use the framed form (which
carries a binary payload) only after the peer's ``cap`` lists 1. ``Envelope`` is the sans-IO
core; ``Messenger`` runs it over a ``LinkPipe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .session import LinkPipe
from .wire import LinkProtocolError, json_object

FRAMED = 0x01
MAX_META = 1 << 20
CAP = {"t": "cap", "env": [1]}


def encode(meta: dict[str, Any], payload: bytes | None = None) -> bytes:
    """Legacy JSON without a payload, the framed form with one."""
    body = json.dumps(meta, separators=(",", ":")).encode()
    if payload is None:
        return body
    return bytes([FRAMED]) + struct.pack(">I", len(body)) + body + payload


def decode(plaintext: bytes) -> tuple[dict[str, Any], bytes | None]:
    """(meta, payload or None); a malformed envelope raises ``LinkProtocolError``."""
    if plaintext[:1] == b"{":
        meta_bytes, payload = plaintext, None
    elif plaintext[:1] == bytes([FRAMED]):
        if len(plaintext) < 5:
            raise LinkProtocolError("framed envelope shorter than its 5-byte header")
        (size,) = struct.unpack(">I", plaintext[1:5])
        if size > min(MAX_META, len(plaintext) - 5):
            raise LinkProtocolError(f"envelope metaLen {size} overruns the frame")
        meta_bytes, payload = plaintext[5 : 5 + size], plaintext[5 + size :]
    else:
        raise LinkProtocolError("an envelope starts with '{' or 0x01")
    meta = json_object(meta_bytes)
    if meta is None:
        raise LinkProtocolError("envelope meta is not a JSON object")
    return meta, payload


@dataclass(frozen=True)
class Incoming:
    kind: str  # "req", "res" or "evt"
    meta: dict[str, Any]
    payload: bytes | None


class Envelope:
    """Negotiation and request ids for one session (sans-IO)."""

    def __init__(self) -> None:
        self.peer_framed = False
        self._next_id = 1

    def hello(self) -> bytes:
        return encode(CAP)

    def _check_payload(self, payload: bytes | None) -> None:
        if payload is not None and not self.peer_framed:
            raise LinkProtocolError("the peer has not announced framed envelopes (cap) yet")

    def request(
        self, cmd: str, data: Any = None, payload: bytes | None = None
    ) -> tuple[int, bytes]:
        self._check_payload(payload)
        request_id = self._next_id
        self._next_id += 1
        return request_id, encode({"t": "req", "id": request_id, "cmd": cmd, "data": data}, payload)

    def event(self, data: Any, payload: bytes | None = None) -> bytes:
        self._check_payload(payload)
        return encode({"t": "evt", "data": data}, payload)

    def response(self, request_id: object, ok: bool, value: Any) -> bytes:
        meta: dict[str, Any] = {"t": "res", "id": request_id, "ok": ok}
        meta["data" if ok else "error"] = value
        return encode(meta)

    def receive(self, plaintext: bytes) -> Incoming | None:
        """What arrived for the application; ``cap`` and unknown kinds are consumed here."""
        meta, payload = decode(plaintext)
        kind = meta.get("t")
        if kind == "cap":
            env = meta.get("env")
            self.peer_framed = isinstance(env, list) and 1 in env
            return None
        if kind in ("req", "res", "evt"):
            return Incoming(kind, meta, payload)
        return None


RequestHandler = Callable[[str, Any, bytes | None], Awaitable[Any]]


class RequestFailed(Exception):
    """The peer answered a request with ``ok: false``."""


class Messenger:
    """Request/response and events over a live ``LinkPipe`` (at-most-once per session)."""

    def __init__(
        self,
        pipe: LinkPipe,
        on_request: RequestHandler | None = None,
        on_event: Callable[[Any, bytes | None], None] | None = None,
    ) -> None:
        self.pipe = pipe
        self.core = Envelope()
        self.on_request = on_request
        self.on_event = on_event
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        pipe.on_envelope = self._inbox.put_nowait
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def start(self) -> Messenger:
        await self.pipe.send_envelope(self.core.hello())
        return self

    async def request(self, cmd: str, data: Any = None, timeout: float = 30.0) -> Any:
        request_id, frame = self.core.request(cmd, data)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self.pipe.send_envelope(frame)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(request_id, None)

    async def send(self, data: Any) -> None:
        await self.pipe.send_envelope(self.core.event(data))

    async def _run(self) -> None:
        while True:
            plaintext = await self._inbox.get()
            try:
                incoming = self.core.receive(plaintext)
            except LinkProtocolError:
                self.pipe.abort()
                return
            if incoming is None:
                continue
            if incoming.kind == "res":
                future = self._waiting.get(incoming.meta.get("id"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    if incoming.meta.get("ok"):
                        future.set_result(incoming.meta.get("data"))
                    else:
                        future.set_exception(RequestFailed(str(incoming.meta.get("error"))))
            elif incoming.kind == "evt":
                if self.on_event is not None:
                    self.on_event(incoming.meta.get("data"), incoming.payload)
            else:
                task = asyncio.get_running_loop().create_task(self._answer(incoming))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, incoming: Incoming) -> None:
        request_id = incoming.meta.get("id")
        if self.on_request is None:
            reply = self.core.response(request_id, False, "no request handler")
        else:
            try:
                value = await self.on_request(
                    str(incoming.meta.get("cmd")), incoming.meta.get("data"), incoming.payload
                )
                reply = self.core.response(request_id, True, value)
            except Exception as exc:
                reply = self.core.response(request_id, False, str(exc) or type(exc).__name__)
        with contextlib.suppress(Exception):
            await self.pipe.send_envelope(reply)

    def close(self) -> None:
        self._loop_task.cancel()
