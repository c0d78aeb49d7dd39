"""``ws://HOST[:PORT][/PATH]`` and ``wss://…`` — binary WebSocket messages carry a byte stream.

As with multiserver: any path is accepted by the server, ports 80/443 are left out of announced
addresses, and text messages are a protocol error.

WebSocket itself has no half-close. keywire adds one (an extension): an **empty binary message
is FIN**, the end of its sender's direction; the socket is closed (1000) once both directions
have ended, or by ``close``/``abort``. A multiserver peer (pull-ws) never sends an empty message
and closes the socket when its source ends, which still reads here as EOF; the empty message we
send reaches it as an empty chunk, which its stream ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any
from urllib.parse import urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake
from websockets.protocol import State

from ..address import DEFAULT_PORTS, Section, format_url_host
from ..admission import LimitLog, per_ip_share
from ..errors import Code, StreamError
from ..options import Options
from ..pipe import Pipe, socket_unacknowledged
from ..plugin import Listening, PipeHandler, Transport
from ..registry import Registry
from .base import ServerListening, run_pipe_handler
from .net import bind_tcp

MAX_MESSAGE = 1 << 20
WRITE_LIMIT = 1 << 20

#: the logger our ws servers give websockets: a peer's misbehaviour is not our error
server_log = logging.getLogger("keywire.transport.ws")


class _PeerFaults(logging.Filter):
    """Keeps websockets' tracebacks for a peer that half-closes or hangs up mid-upgrade out of
    stderr: websockets 17 reports that as an "unexpected internal error" (an AssertionError in
    ``send_eof``), though only the peer did anything wrong. One rate-limited line remains."""

    def __init__(self) -> None:
        super().__init__()
        self.limits = LimitLog(server_log)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1]
        if isinstance(exc, AssertionError | ConnectionError | EOFError):
            server_log.debug("peer failed its upgrade: %r", exc)
            return False
        return True


server_log.addFilter(_PeerFaults())


class WsPipe(Pipe):
    """A pipe over one WebSocket connection (client or server side), with FIN as an empty
    binary message (see the module docstring)."""

    supports_half_close = True

    def __init__(self, ws: ClientConnection | ServerConnection, peer: str) -> None:
        self._ws = ws
        self.peer = peer
        self._pending: memoryview = memoryview(b"")
        self._eof = False
        #: the closing handshake once both directions ended (not awaited by read/close_write:
        #: it needs the peer to process our close frame, which a paused reader may not do yet)
        self._closing: asyncio.Task[None] | None = None

    async def read(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            if self._eof:
                return b""
            try:
                message = await self._ws.recv()
            except ConnectionClosedOK:
                # a multiserver peer closes the socket when its source ends: its only EOF
                self._eof = True
                return b""
            except ConnectionClosed as exc:
                raise self._lost(exc) from None
            if isinstance(message, str):
                await self._ws.close(1003, "binary messages only")
                raise StreamError(Code.PROTOCOL_ERROR, f"{self.peer}: text message on a byte pipe")
            if not message:  # FIN
                self._eof = True
                self._end_if_done()
                return b""
            self._pending = memoryview(message)
        take = self._pending[:max_bytes] if max_bytes >= 0 else self._pending
        self._pending = self._pending[len(take) :]
        return bytes(take)

    async def write(self, data: bytes) -> None:
        self._check_writable()
        view = memoryview(data)
        try:
            for start in range(0, len(view), MAX_MESSAGE):
                await self._ws.send(view[start : start + MAX_MESSAGE])
        except ConnectionClosed as exc:
            raise self._lost(exc) from None

    async def close_write(self) -> None:
        """Send FIN (an empty message); the peer's direction stays open."""
        if not self._end_writes():
            return
        try:
            await self._ws.send(b"")
        except ConnectionClosed as exc:
            raise self._lost(exc) from None
        self._end_if_done()

    def _lost(self, exc: ConnectionClosed) -> StreamError:
        """The error every method raises when the socket fails, naming the peer."""
        return StreamError(Code.NETWORK_ERROR, f"{self.peer}: websocket lost ({exc})")

    def _end_if_done(self) -> None:
        """Both directions ended: start the closing handshake (1000)."""
        if self._eof and self._write_closed and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close_socket())

    async def _close_socket(self) -> None:
        try:
            await self._ws.close(1000)
        except Exception:
            self.abort()

    def unacknowledged(self) -> int | None:
        """Bytes in the transport's buffer plus those the peer's kernel has not acknowledged
        (a closing stream waits for 0 before it closes the socket)."""
        transport = self._ws.transport
        if transport is None or transport.is_closing():
            return None
        queued = socket_unacknowledged(transport.get_extra_info("socket"))
        return None if queued is None else queued + transport.get_write_buffer_size()

    def abort(self) -> None:
        if self._closing is not None:
            self._closing.cancel()
        transport = self._ws.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def close(self) -> None:
        self._write_closed = True
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._closing)
            return
        try:
            await self._ws.close(1000)
        except Exception:
            self.abort()


def _client_ssl(options: Options, scheme: str) -> ssl.SSLContext | None:
    if scheme != "wss":
        return None
    ctx = options.extra.get("ws.ssl_client")
    if isinstance(ctx, ssl.SSLContext):
        return ctx
    return ssl.create_default_context()


class WsTransport(Transport):
    """Registered twice, as ``ws`` and ``wss``."""

    def __init__(self, scheme: str) -> None:
        self.name = scheme

    async def connect(self, section: Section, options: Options) -> Pipe:
        url = section.url or ""
        try:
            ws = await connect(
                url,
                compression=None,
                max_size=MAX_MESSAGE,
                write_limit=WRITE_LIMIT,
                open_timeout=options.timeout,
                proxy=options.extra.get("ws.proxy"),
                user_agent_header=None,
                ssl=_client_ssl(options, self.name),
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise StreamError(Code.NETWORK_ERROR, f"cannot open {url}: {exc}") from None
        return WsPipe(ws, url)

    async def listen(self, section: Section, options: Options, on_pipe: PipeHandler) -> Listening:
        host, port = section.url_host_port()
        parts = section.split_url()
        if parts.port is None and section.name in DEFAULT_PORTS:
            port = DEFAULT_PORTS[section.name]
        server_ssl: Any = options.extra.get("ws.ssl")
        if section.name == "wss" and not isinstance(server_ssl, ssl.SSLContext):
            raise ValueError(
                "listening on wss:// needs Options.extra['ws.ssl'] (an SSLContext "
                "with the server certificate); or serve ws:// behind a TLS proxy"
            )
        sock = bind_tcp(host, port)
        # before their upgrade, oldest first, with the source IP of each
        opening: dict[ServerConnection, str] = {}
        per_ip: dict[str, int] = {}
        share = per_ip_share(options.max_connections)
        limits = LimitLog(server_log)

        class TrackedConnection(ServerConnection):
            """Known from the first byte, so closing the listener can drop unfinished upgrades
            (websockets itself only answers them once their request is complete), and so one
            source cannot hold every pre-upgrade slot: past its share a newcomer from that IP
            is dropped, past the total the oldest unfinished upgrade makes room."""

            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                peer = transport.get_extra_info("peername")
                ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
                if per_ip.get(ip, 0) >= share:
                    limits.hit("ws upgrades per IP", ip)
                    transport.abort()
                    return
                while len(opening) >= options.max_connections:
                    oldest = next(iter(opening))
                    limits.hit("ws upgrades in all", opening[oldest])
                    _forget(oldest)
                    oldest.transport.abort()
                opening[self] = ip
                per_ip[ip] = per_ip.get(ip, 0) + 1

            def connection_lost(self, exc: Exception | None) -> None:
                _forget(self)
                super().connection_lost(exc)

        def _forget(ws: ServerConnection) -> None:
            ip = opening.pop(ws, None)
            if ip is not None:
                left = per_ip.get(ip, 0) - 1
                if left > 0:
                    per_ip[ip] = left
                else:
                    per_ip.pop(ip, None)

        def drop_opening() -> None:
            for ws in list(opening):
                if ws.protocol.state is State.CONNECTING:
                    ws.transport.abort()

        async def accepted(ws: ServerConnection) -> None:
            _forget(ws)  # upgraded: the Server's own per-IP share counts it from here
            remote = ws.remote_address
            # the peer as a URL of this scheme, so it parses as an address section
            peer = f"{self.name}://{format_url_host(str(remote[0]))}:{remote[1]}" if remote else ""
            pipe = WsPipe(ws, peer)
            await run_pipe_handler(on_pipe, pipe)
            await ws.wait_closed()

        server = await serve(
            accepted,
            sock=sock,
            compression=None,
            max_size=MAX_MESSAGE,
            write_limit=WRITE_LIMIT,
            ssl=server_ssl,
            server_header=None,
            # a client that never completes its upgrade is dropped like any other handshake
            open_timeout=options.handshake_timeout,
            create_connection=TrackedConnection,
            logger=server_log,
        )
        bound = sock.getsockname()[1]
        path = parts.path

        def make(h: str, p: int) -> Section:
            return url_section(self.name, h, p, path)

        def stop() -> None:
            # stop accepting, but leave open connections alone: websockets would end them
            # with 1001 (read as EOF), while the keywire Server closes them itself, with its
            # own code (a --stdio listener stops listening once its one connection arrived)
            server.close(close_connections=False)
            drop_opening()

        return ServerListening(None, host, bound, make, closer=stop)


def url_section(scheme: str, host: str, port: int, path: str = "") -> Section:
    default = DEFAULT_PORTS.get(scheme)
    netloc = format_url_host(host) + ("" if port == default else f":{port}")
    url = urlunsplit((scheme, netloc, path, "", ""))
    return Section(scheme, (), url)


def register(registry: Registry) -> None:
    registry.add_transport(WsTransport("ws"))
    registry.add_transport(WsTransport("wss"))
    registry.declare_settings("ws", ("ssl", "ssl_client", "proxy"))
