"""Client of the map server: a ``StoreBackend`` over HTTP/1.1 keep-alive connections.

Each put or get takes an idle connection (or opens one, up to ``max_connections``); a long-poll
get holds its connection while it waits, which is why a stream's pipelined gets each need one.
A connection that failed, or was cancelled mid-request, is closed rather than reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from urllib.parse import urlsplit

from ..mapserver.http1 import HttpError, format_request, parse_response_head
from ..mapserver.mapauth import check_token
from ..tls import client_context, explain
from .backend import StoreBackend, StoreError, StoreFull, StoreRefused, ValueTooLarge, check_address

DEFAULT_MAX_VALUE = 1 << 16


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class HttpStore(StoreBackend):
    """``HttpStore("http://127.0.0.1:8080")``: the map server at that URL (path prefix allowed).

    ``https://`` verifies the server against the system trust store, or against ``cafile`` alone
    when given. ``token`` is sent as ``Authorization: Bearer`` on every request, for a server
    started with ``--token-file``.
    """

    def __init__(
        self,
        url: str,
        *,
        max_value: int = DEFAULT_MAX_VALUE,
        max_connections: int = 256,
        connect_timeout: float = 10.0,
        cafile: str | None = None,
        token: str | None = None,
        signed: bool = False,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"map server URL must be http(s)://HOST[:PORT][/PREFIX], got {url!r}")
        hostport = parts.netloc.rpartition("@")[2]  # never show or send user info
        self.url = url
        self.description = f"map server {parts.scheme}://{hostport}"
        self.max_value = max_value
        #: sign puts (a server started with --signed needs it; ``probe`` turns it on then)
        self.signed = signed
        #: puts refused because the address held other bytes (write-once): dropped like a
        #: lost put, since what is there stays
        self.conflicts = 0
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = client_context(cafile) if parts.scheme == "https" else None
        self._host_header = hostport
        self._prefix = parts.path.rstrip("/")
        self._auth = {"Authorization": f"Bearer {check_token(token)}"} if token else {}
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout = connect_timeout
        self._closed = False

    async def _connect(self) -> _Conn:
        if self._idle:
            return self._idle.pop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl
                )
        except ssl.SSLCertVerificationError as exc:
            raise StoreRefused(f"{self.description}: {explain(exc)}") from None
        except (OSError, TimeoutError) as exc:
            raise StoreError(f"{self.description}: cannot connect: {exc or 'timed out'}") from None
        return _Conn(reader, writer)

    async def _request(
        self, method: str, address: bytes | None, body: bytes | None, query: str = ""
    ) -> tuple[int, bytes]:
        if self._closed:
            raise StoreError(f"{self.description}: client is closed")
        tail = "" if address is None else f"/{address.hex()}{query}"
        target = f"{self._prefix}/v1{tail}"
        async with self._slots:
            conn = await self._connect()
            reusable = False
            try:
                conn.writer.write(
                    format_request(method, target, self._host_header, body, self._auth)
                )
                await conn.writer.drain()
                head = parse_response_head((await conn.reader.readuntil(b"\r\n\r\n"))[:-4])
                length = max(head.content_length, 0)
                if length > self.max_value + 4096:
                    raise StoreError(
                        f"{self.description}: response of {length} bytes is larger than any value"
                    )
                payload = await conn.reader.readexactly(length)
                reusable = head.keep_alive and head.content_length >= 0
                return head.status, payload
            except HttpError as exc:
                raise StoreError(f"{self.description}: {exc}") from None
            except asyncio.IncompleteReadError as exc:
                said = "before answering" if not exc.partial else "in the middle of an answer"
                raise StoreError(
                    f"{self.description}: the server closed the connection {said}"
                ) from None
            except (OSError, asyncio.LimitOverrunError) as exc:
                raise StoreError(f"{self.description}: {type(exc).__name__}: {exc}") from None
            finally:
                if reusable and not self._closed:
                    self._idle.append(conn)
                else:
                    conn.close()

    async def put(self, address: bytes, value: bytes) -> None:
        check_address(address)
        if len(value) > self.max_value:
            raise ValueTooLarge(len(value), self.max_value)
        status, body = await self._request("PUT", address, value)
        if status == 413:
            raise ValueTooLarge(len(value), self.max_value)
        if status == 401:
            raise self._refused("write", body)
        if status == 409:
            self.conflicts += 1
            return
        if status == 403:
            said = body[:200].decode("utf-8", "replace").strip()
            raise StoreRefused(f"{self.description} refused the write: {said} (403)")
        if status == 507:
            raise StoreFull(
                f"{self.description} is full: {body[:200].decode('utf-8', 'replace').strip()} (507)"
            )
        if status not in (200, 201, 204):
            raise StoreError(
                f"{self.description}: PUT answered {status}: "
                f"{body[:200].decode('utf-8', 'replace').strip()}"
            )

    async def get(self, address: bytes, wait: float) -> bytes | None:
        check_address(address)
        query = f"?wait={wait:g}" if wait > 0 else ""
        status, body = await self._request("GET", address, None, query)
        if status == 200:
            return body
        if status == 404:
            return None
        if status == 401:
            raise self._refused("read", body)
        raise StoreError(
            f"{self.description}: GET answered {status}: "
            f"{body[:200].decode('utf-8', 'replace').strip()}"
        )

    async def probe(self) -> None:
        """``GET /v1``: shows an untrusted certificate, or a refused read, before a stream."""
        status, body = await self._request("GET", None, None)
        if status == 401:
            raise self._refused("read", body)
        if status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(body).get("signed") is True:
                    self.signed = True  # the server takes signed puts only

    def _refused(self, action: str, body: bytes) -> StoreRefused:
        said = body[:200].decode("utf-8", "replace").strip()
        return StoreRefused(
            f"{self.description} refused the {action}: missing or wrong token"
            + (f" (401: {said})" if said else "")
        )

    async def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
