"""The embedded map server: a small HTTP key-value store that store streams can share.

Protocol (all values opaque, addresses 32 bytes as 64 lowercase or uppercase hex digits):

* ``PUT /v1/<hex>`` with a body of 1..max-value bytes → 204; oversized → 413, bad address → 400,
  store budget exhausted → 507. With ``signed`` (write capabilities, ``capability.py``) the
  body is ``signature || value`` and must verify under the address (else 403), and a put at an
  address holding other bytes is refused with 409 (write-once; the same bytes again → 204).
* ``GET /v1/<hex>?wait=SECONDS`` → 200 with the value; if there is none, the request waits (long
  poll, at most ``max_wait``) for a put, then 404. Too many waiting gets → 503.
* ``GET /v1`` → a JSON line with the limits, so clients can check their value size.

Entries expire ``ttl`` seconds after their last put. With ``db`` set, entries are written to
SQLite and reloaded at start, so a restarted server still has them. With ``tls`` it serves
https; with ``token`` every mutating request (and with ``token_read`` every request) needs
``Authorization: Bearer TOKEN``, or gets 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import ssl
import time
from collections.abc import Hashable, Iterator
from pathlib import Path

from ..capability import CapabilityError, parse_signed_put
from .http1 import HttpError, RequestHead, format_response, parse_request_head
from .mapauth import TokenPolicy
from .maptable import MapTable, TableError

log = logging.getLogger("keywire.store.mapserver")

MAX_WAIT = 60.0
SWEEP_INTERVAL = 5.0
#: idle keep-alive connections are closed after this long (between requests)
IDLE_TIMEOUT = 120.0
#: a new connection must send its first request head within this, and a request that has
#: begun must finish its head within this
HEAD_TIMEOUT = 10.0
#: a body announced by Content-Length must arrive within this
BODY_TIMEOUT = 10.0
#: the body of a request refused for its token is read (so the client sees the 401 rather
#: than a reset) for at most this long
REFUSED_BODY_TIMEOUT = 2.0
#: limit lines are logged at most this often per kind
LOG_EVERY = 10.0
#: a TLS client that has not finished its handshake by then is dropped
HANDSHAKE_TIMEOUT = 10.0
_BINARY = "application/octet-stream"


class MapDatabase:
    """SQLite persistence of the table (wall-clock expiry, so it survives restarts)."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (address BLOB PRIMARY KEY, "
            "value BLOB NOT NULL, expires REAL NOT NULL)"
        )

    def rows(self) -> Iterator[tuple[bytes, bytes, float]]:
        yield from self._db.execute("SELECT address, value, expires FROM entries")

    def put(self, address: bytes, value: bytes, expires: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", (address, value, expires)
        )

    def delete(self, addresses: list[bytes]) -> None:
        self._db.executemany("DELETE FROM entries WHERE address = ?", [(a,) for a in addresses])

    def close(self) -> None:
        self._db.close()


def parse_address(path_tail: str) -> bytes:
    if len(path_tail) != 64:
        raise HttpError(400, f"address must be 64 hex digits, got {len(path_tail)} characters")
    try:
        return bytes.fromhex(path_tail)
    except ValueError:
        raise HttpError(400, "address is not hexadecimal") from None


class MapServer:
    """``await MapServer(...).start()``; ``url`` is where it listens."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ttl: float = 3600.0,
        max_value: int = 1 << 16,
        max_bytes: int = 256 << 20,
        max_waiters: int = 4096,
        max_connections: int = 1024,
        max_connections_per_ip: int = 256,
        db: str | Path | None = None,
        tls: ssl.SSLContext | None = None,
        token: str | None = None,
        token_read: bool = False,
        signed: bool = False,
    ) -> None:
        if token_read and token is None:
            raise ValueError("token_read needs a token")
        self.host = host
        self.port = port
        self.table = MapTable(
            max_value=max_value,
            ttl=ttl,
            max_bytes=max_bytes,
            max_waiters=max_waiters,
            write_once=signed,
        )
        #: puts must be signed by the address's key (capability.py) and are write-once
        self.signed = signed
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self._per_ip: dict[str, int] = {}
        self._limit_logged: dict[str, tuple[float, int]] = {}
        self._tls = tls
        self._policy = None if token is None else TokenPolicy(token, protect_reads=token_read)
        self._db_path = db
        self._db: MapDatabase | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._waiters: dict[Hashable, asyncio.Future[None]] = {}
        self._connections: set[asyncio.Task[None]] = set()
        #: the first byte of a connection's next request, read while a long poll waited
        self._early: dict[asyncio.StreamReader, bytes] = {}
        self.requests = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> MapServer:
        if self._db_path is not None:
            self._db = MapDatabase(self._db_path)
            loaded = 0
            now = time.time()
            for address, value, expires in self._db.rows():
                try:
                    loaded += self.table.load([(bytes(address), bytes(value), expires)], now)
                except TableError as exc:
                    log.warning("map server: skipping a stored entry: %s", exc)
            log.info("map server: loaded %d entries from %s", loaded, self._db_path)
        # a deep backlog: each stream opens a connection per pipelined get at once, and a
        # dropped SYN costs the client a one-second retransmission
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.port,
            reuse_address=True,
            backlog=4096,
            ssl=self._tls,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self._tls is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self._db is not None:
            self._db.close()
            self._db = None

    async def __aenter__(self) -> MapServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def _sweep(self) -> None:
        while True:
            # a short TTL is swept more often, so what the server holds stays about one TTL
            await asyncio.sleep(min(SWEEP_INTERVAL, max(0.25, self.table.ttl / 4)))
            gone = self.table.expire(time.time())
            if gone and self._db is not None:
                self._db.delete(gone)

    # -- connections -------------------------------------------------------------------------
    def _log_limit(self, kind: str, message: str) -> None:
        """One line per ``kind`` per ``LOG_EVERY`` seconds, with how many were not logged."""
        now = time.monotonic()
        last, skipped = self._limit_logged.get(kind, (-LOG_EVERY, 0))
        if now - last < LOG_EVERY:
            self._limit_logged[kind] = (last, skipped + 1)
            return
        more = f" ({skipped} more since the last line)" if skipped else ""
        log.warning("map server: %s%s", message, more)
        self._limit_logged[kind] = (now, 0)

    def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        writer.write(
            format_response(503, why.encode() + b"\n", keep_alive=False, content_type="text/plain")
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._connections.add(task)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        try:
            if self._per_ip[ip] > self.max_connections_per_ip:
                self._log_limit(
                    "per-ip",
                    f"refusing connections from {ip}: it has {self.max_connections_per_ip} open",
                )
                self._refuse(writer, "too many connections from your address")
                return
            if len(self._connections) > self.max_connections:
                self._log_limit("total", f"refusing connections: {self.max_connections} open")
                self._refuse(writer, "too many connections")
                return
            first = True
            while await self._one_request(reader, writer, first):
                first = False
        except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # close() cancels connection tasks; asyncio's server must not see it
        except asyncio.LimitOverrunError:
            with contextlib.suppress(Exception):
                writer.write(
                    format_response(
                        431, b"request head too long\n", keep_alive=False, content_type="text/plain"
                    )
                )
        finally:
            self._connections.discard(task)
            self._early.pop(reader, None)
            left = self._per_ip[ip] - 1
            if left:
                self._per_ip[ip] = left
            else:
                del self._per_ip[ip]
            with contextlib.suppress(Exception):
                writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool
    ) -> bool:
        """Serve one request; False when the connection should close. A new connection gets
        ``HEAD_TIMEOUT`` for its whole first head; a kept-alive one may idle for
        ``IDLE_TIMEOUT``, and then has ``HEAD_TIMEOUT`` from the first byte of its next."""
        try:
            if first:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head_bytes = await reader.readuntil(b"\r\n\r\n")
            else:
                opening = self._early.pop(reader, b"")
                if not opening:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        opening = await reader.readexactly(1)
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head_bytes = opening + await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        self.requests += 1
        try:
            head = parse_request_head(head_bytes[:-4])
            if self._policy is not None:
                await self._authorise(head, reader)
            status, body, ctype = await self._handle(head, reader)
            keep = head.keep_alive
            extra: dict[str, str] = {}
        except HttpError as exc:
            status, body, ctype = exc.status, (exc.message + "\n").encode(), "text/plain"
            keep = False  # the body of a refused request may still be on the wire
            extra = exc.headers
        writer.write(
            format_response(status, body, keep_alive=keep, content_type=ctype, extra=extra)
        )
        await writer.drain()
        return keep

    async def _authorise(self, head: RequestHead, reader: asyncio.StreamReader) -> None:
        assert self._policy is not None
        try:
            self._policy.check(head.method, head.headers)
        except HttpError:
            # read a refused put's body (it is at most one value) before answering, so closing
            # the socket does not reset the connection before the client reads the 401
            if 0 < head.content_length <= self.table.max_value:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REFUSED_BODY_TIMEOUT):
                        await reader.readexactly(head.content_length)
            raise

    async def _handle(
        self, head: RequestHead, reader: asyncio.StreamReader
    ) -> tuple[int, bytes, str]:
        path = head.path
        if path in ("/v1", "/v1/"):
            if head.method != "GET":
                raise HttpError(405, "only GET on /v1")
            info = {
                "service": "keywire map",
                "max_value": self.table.max_value,
                "ttl": self.table.ttl,
                "max_wait": MAX_WAIT,
                "signed": self.signed,
            }
            return 200, (json.dumps(info) + "\n").encode(), "application/json"
        if path == "/":
            return 200, b"keywire map server: PUT/GET /v1/<64 hex digits>\n", "text/plain"
        if not path.startswith("/v1/"):
            raise HttpError(404, f"no such path {path[:80]!r}")
        address = parse_address(path[4:])
        if head.method == "PUT":
            return await self._put(address, head, reader)
        if head.method == "GET":
            if head.content_length > 0:
                raise HttpError(400, "GET with a body")
            return await self._get(address, head, reader)
        raise HttpError(405, f"method {head.method} is not allowed (PUT or GET)")

    async def _put(
        self, address: bytes, head: RequestHead, reader: asyncio.StreamReader
    ) -> tuple[int, bytes, str]:
        if head.content_length < 0:
            raise HttpError(411, "PUT needs a Content-Length")
        try:
            self.table.check_put(address, head.content_length)
        except TableError as exc:
            raise HttpError(exc.status, str(exc)) from None
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                value = await reader.readexactly(head.content_length)
        except TimeoutError:
            self._log_limit(
                "body",
                f"dropped a PUT whose {head.content_length}-byte body did "
                f"not arrive in {BODY_TIMEOUT:g} s",
            )
            raise
        if self.signed:
            try:
                parse_signed_put(address, value)
            except CapabilityError as exc:
                raise HttpError(403, str(exc)) from None
        now = time.time()
        try:
            woken = self.table.put(address, value, now)
        except TableError as exc:
            raise HttpError(exc.status, str(exc)) from None
        if self._db is not None:
            self._db.put(address, value, now + self.table.ttl)
        for token in woken:
            waiter = self._waiters.get(token)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        return 204, b"", _BINARY

    async def _get(
        self, address: bytes, head: RequestHead, reader: asyncio.StreamReader
    ) -> tuple[int, bytes, str]:
        wait_text = head.query.get("wait", "0")
        try:
            wait = float(wait_text)
        except ValueError:
            raise HttpError(400, f"wait={wait_text[:20]!r} is not a number") from None
        if not 0 <= wait < float("inf"):
            raise HttpError(400, "wait must be a non-negative number of seconds")
        wait = min(wait, MAX_WAIT)
        value = self.table.get(address, time.time())
        if value is None and wait > 0:
            token = object()
            try:
                self.table.add_waiter(address, token)
            except TableError as exc:
                raise HttpError(exc.status, str(exc)) from None
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[token] = waiter
            # a client that gives up (a cancelled get closes its connection) must not hold a
            # waiter and a connection for the whole wait: watch for its EOF meanwhile
            watch = asyncio.ensure_future(reader.read(1))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            try:
                await asyncio.wait(
                    (waiter, watch), timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if watch.done() and not watch.exception() and watch.result():
                    # a pipelined next request, not a close: wait on for the value
                    await asyncio.wait((waiter,), timeout=max(0.0, deadline - loop.time()))
            finally:
                self._waiters.pop(token, None)
                self.table.remove_waiter(address, token)
                waiter.cancel()
                watch.cancel()  # (no effect once it is done)
            await _settled(watch)
            if not watch.cancelled():
                early = watch.result()  # an OSError here ends the connection like any other
                if not early:
                    raise ConnectionResetError("the client closed during a long poll")
                self._early[reader] = early  # a pipelined next request: keep its first byte
            value = self.table.get(address, time.time())
        if value is None:
            return 404, b"", _BINARY
        return 200, value, _BINARY


async def _settled(task: asyncio.Task[bytes]) -> None:
    """Wait until ``task`` (cancelled by us, or done) has finished, so the stream it reads
    has no reader left waiting; a cancellation of our own task still propagates."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # its outcome is read by the caller
        pass
