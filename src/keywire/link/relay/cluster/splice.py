"""A client at this node spliced to the node that holds its host: one TCP hop, bytes only.

The node opens a WebSocket to the host's node (an authenticated upgrade, see ``nodeauth``)
and sends the client's ``resolve`` on it as its own first frame. From then on it forwards
raw TCP bytes both ways and parses nothing: a client's frames are masked client frames and
the far node's are unmasked server frames, exactly what each end expects, so the far node runs
Link's protocol with this connection as the client (its shaping, quotas, ticket check, idle
rules, pings and size limits apply unchanged) and its close frames reach the client as sent.
Content-blind like a local splice, and it costs the node two socket copies per chunk.

Backpressure is by pausing reads: a client socket whose buffer is full stops reads from the
far node and the other way round, so nothing is buffered without bound.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from ..core import MAX_CONTROL
from ..wsout import flush_ws
from .nodeauth import HEADER

if TYPE_CHECKING:
    from ..server import _Socket

NODE_OPEN_TIMEOUT = 5.0
#: close code when the far node cannot be reached (RFC 6455 1013: try again later)
TRY_AGAIN = 1013
WRITE_HIGH = 1 << 20
WRITE_LOW = 1 << 18
#: frames from the client held until the node link is open (the client waits for ``found``)
MAX_EARLY = 16


class RemoteSplice(asyncio.Protocol):
    """One client socket here ↔ one connection to the host's node (this is its protocol)."""

    def __init__(self, sock: _Socket, url: str, token: str, first: bytes) -> None:
        self.sock = sock
        self.uri = parse_uri(url)
        self.token = token
        self.ws = ClientProtocol(self.uri, max_size=MAX_CONTROL)  # the upgrade only
        self.transport: asyncio.Transport | None = None
        self.client: asyncio.Transport | None = None  # set once raw
        self.early: list[tuple[Opcode, bytes]] = [(Opcode.TEXT, first)]
        self.done = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.task = asyncio.get_running_loop().create_task(self._connect())

    # -- before the node link is open: the client's frames come through the relay -------------
    def from_client(self, opcode: Opcode, data: bytes) -> None:
        self.early.append((opcode, data))
        if len(self.early) > MAX_EARLY:
            self.sock.pause()

    def client_writable(self) -> None:
        """Nothing to do: once raw, the client's transport reports to ``_ClientPipe``."""

    def client_gone(self) -> None:
        self.done = True
        self.task.cancel()
        if self.client is not None:
            self.client.close()
        if self.transport is not None:
            self.transport.close()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(NODE_OPEN_TIMEOUT):
                await loop.create_connection(
                    lambda: self,
                    self.uri.host,
                    self.uri.port,
                    ssl=True if self.uri.secure else None,
                )
        except asyncio.CancelledError:
            return
        except (OSError, TimeoutError) as exc:
            self._refuse(f"the host's relay node is unreachable ({exc})")

    def _refuse(self, reason: str) -> None:
        if not self.done:
            self.done = True
            self.sock.close(TRY_AGAIN, reason[:120])

    # -- the node link ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.done:
            transport.abort()
            return
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        request = self.ws.connect()
        request.headers[HEADER] = self.token
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.bytes_in += len(data)
            self.client.write(data)
            return
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                self._opened()
                return

    def _opened(self) -> None:
        """The upgrade is answered: send the held frames, then hand both sockets to raw."""
        client = self.sock.transport
        if self.ws.handshake_exc is not None or self.ws.state is not State.OPEN:
            self._refuse("the host's relay node refused the node link")
            if self.transport is not None:
                self.transport.abort()
            return
        if client is None or client.is_closing() or self.transport is None:
            self.client_gone()
            return
        for opcode, data in self.early:
            if opcode is Opcode.TEXT:
                self.ws.send_text(data)
            else:
                self.ws.send_binary(data)
        self.early = []
        self._flush()
        self.sock.paused = True  # the relay's heartbeat and closes leave this socket alone
        client.set_protocol(_ClientPipe(self, self.sock))
        client.resume_reading()
        self.client = client

    def _flush(self) -> None:
        flush_ws(self.ws, self.transport)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None and not self.client.is_closing():
            self.client.resume_reading()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.client.close()  # the far node's close frame, if any, went through already
        else:
            self._refuse("the host's relay node went away")


class _ClientPipe(asyncio.Protocol):
    """The client's transport once raw: bytes to the node link; its loss to the relay."""

    def __init__(self, splice: RemoteSplice, sock: _Socket) -> None:
        self.splice = splice
        self.sock = sock

    def data_received(self, data: bytes) -> None:
        link = self.splice.transport
        if link is not None and not link.is_closing():
            self.splice.bytes_out += len(data)
            link.write(data)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        if self.splice.transport is not None:
            self.splice.transport.pause_reading()

    def resume_writing(self) -> None:
        link = self.splice.transport
        if link is not None and not link.is_closing():
            link.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sock.connection_lost(exc)  # the relay's bookkeeping, then client_gone()
