"""``keywire listen kps:… --web HOST:PORT``: a demo page that dials the listener from a browser.

``serve_demo`` is a deliberately tiny HTTP server (GET of a fixed set of files, nothing else)
serving the demo page and the browser module; the page learns the listener's KPS address from
``/config.json`` and dials it over WebRTC. ``DemoApp`` is the matching connection handler: a
stream whose first line is ``chat`` joins a chat room (each line goes to every member), any
other stream is echoed, and datagrams are echoed.

``localhost``/``127.0.0.1`` pages are secure contexts, which WebCrypto (the ICE password)
needs; from another machine, serve the page over https.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path

from ...errors import Code
from ...stream import Connection, Stream

MAX_REQUEST = 8192
#: HTTP connections served at once (more are closed at once)
MAX_HTTP_CLIENTS = 64
#: seconds a chat member may take to accept a line before it is dropped
CHAT_WRITE_TIMEOUT = 2.0
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".mjs": "text/javascript; charset=utf-8",
}


def web_dir() -> Path:
    """Where ``keywire.js`` and ``demo.html`` live: package data of keywire (``keywire/web``)."""
    folder = Path(__file__).resolve().parents[2] / "web"
    if not (folder / "keywire.js").is_file():
        raise FileNotFoundError(
            f"keywire's browser module is missing from {folder}: reinstall "
            "keywire (it ships keywire/web/keywire.js as package data)"
        )
    return folder


class DemoServer:
    """The running HTTP server; ``url`` is what to open in a browser."""

    def __init__(self, server: asyncio.Server, routes: dict[str, tuple[bytes, str]]) -> None:
        self._server = server
        self.routes = routes

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = str(self._server.sockets[0].getsockname()[0])
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{'[' + shown + ']' if ':' in shown else shown}:{self.port}/"

    async def close(self) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)


async def serve_demo(
    host: str, port: int, address: str, *, extra: Mapping[str, Path] | None = None
) -> DemoServer:
    """Serve the demo page for ``address`` (a KPS address of a WebRTC listener) on host:port.

    ``extra`` maps more URL paths to files (the browser tests' scenarios).
    """
    root = web_dir()
    routes: dict[str, tuple[bytes, str]] = {
        "/": ((root / "demo.html").read_bytes(), _TYPES[".html"]),
        "/keywire.js": ((root / "keywire.js").read_bytes(), _TYPES[".js"]),
        "/webtransport.js": ((root / "webtransport.js").read_bytes(), _TYPES[".js"]),
        "/config.json": (json.dumps({"address": address}).encode(), _TYPES[".json"]),
        "/favicon.ico": (b"", "image/x-icon"),
    }
    for path, file in (extra or {}).items():
        routes[path] = (Path(file).read_bytes(), _TYPES.get(Path(file).suffix, "text/plain"))

    active = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= MAX_HTTP_CLIENTS:
            writer.close()
            return
        active += 1
        try:
            await serve_one(reader, writer)
        finally:
            active -= 1

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
        except (
            asyncio.LimitOverrunError,
            asyncio.IncompleteReadError,
            TimeoutError,
            ConnectionError,
        ):
            writer.close()
            return
        status, body, ctype = _answer(head, routes)
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: "
            f"{len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST)
    return DemoServer(server, routes)


def _answer(head: bytes, routes: dict[str, tuple[bytes, str]]) -> tuple[str, bytes, str]:
    try:
        method, target, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
    except ValueError:
        return "400 Bad Request", b"bad request\n", "text/plain"
    if method != "GET":
        return "405 Method Not Allowed", b"GET only\n", "text/plain"
    found = routes.get(target.split("?", 1)[0])
    if found is None:
        return "404 Not Found", b"not found\n", "text/plain"
    return "200 OK", found[0], found[1]


class DemoApp:
    """Echo and chat for the demo page (any keywire connection can use it)."""

    def __init__(self) -> None:
        self.members: set[Stream] = set()

    async def handle(self, conn: Connection) -> None:
        tasks = {asyncio.create_task(self._datagrams(conn))}
        try:
            async for stream in conn:
                task = asyncio.create_task(self.handle_stream(stream))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()

    async def _datagrams(self, conn: Connection) -> None:
        with contextlib.suppress(Exception):
            while True:
                conn.send_datagram(await conn.receive_datagram())

    async def handle_stream(self, stream: Stream) -> None:
        """One stream: ``chat`` as its first line joins the room, anything else is echoed."""
        with contextlib.suppress(Exception):
            first = await stream.read(4096)
            if first.startswith(b"chat\n"):
                await self._chat(stream, first[5:])
                return
            data = first
            while data:
                await stream.write(data)
                data = await stream.read()
            await stream.close_write()

    async def _chat(self, stream: Stream, pending: bytes) -> None:
        self.members.add(stream)
        try:
            buffer = pending
            while True:
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    for member in list(self.members):
                        await self._say(member, line[:1000] + b"\n")
                chunk = await stream.read()
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) > 4096:
                    buffer = buffer[-4096:]
            await stream.close_write()
        finally:
            self.members.discard(stream)

    async def _say(self, member: Stream, line: bytes) -> None:
        """One line to one member; a member that stops reading is dropped, not waited for."""
        try:
            await asyncio.wait_for(member.write(line), CHAT_WRITE_TIMEOUT)
        except TimeoutError:
            self.members.discard(member)
            member.reset(Code.QUEUE_FULL)
        except Exception:
            self.members.discard(member)
