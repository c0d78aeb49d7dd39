"""Just enough HTTP/1.1 for the map server and its client, as pure functions over bytes.

Only what the map protocol uses: a request line, headers, and a body framed by
``Content-Length`` (no chunked bodies, no pipelining tricks). Parsing is strict and bounded so
a hostile client gets a 4xx naming the problem, never an exception the server did not expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_HEAD = 8192
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class HttpError(Exception):
    """A request the server refuses, with the status to answer."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        #: extra response headers (``WWW-Authenticate`` with a 401)
        self.headers = headers or {}
        super().__init__(f"{status} {REASONS.get(status, '')}: {message}")


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    content_length: int
    keep_alive: bool


def _headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise HttpError(400, f"malformed header line {line[:40]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key in headers and key == "content-length":
            raise HttpError(400, "Content-Length given twice")
        headers[key] = text
    return headers


def _length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
    text = headers.get("content-length")
    if text is None:
        return -1
    if not text.isdigit() or len(text) > 12:
        raise HttpError(400, f"Content-Length {text[:20]!r} is not a decimal number")
    return int(text)


def parse_request_head(head: bytes) -> RequestHead:
    """Parse everything before the blank line (``head`` excludes the final CRLF CRLF)."""
    if len(head) > MAX_HEAD:
        raise HttpError(431, f"request head longer than {MAX_HEAD} bytes")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, f"malformed request line {lines[0][:60]!r}")
    method_b, target_b, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError(400, f"unsupported HTTP version {version[:16]!r}")
    if not method_b.isalpha() or not method_b.isupper():
        raise HttpError(400, f"malformed method {method_b[:16]!r}")
    try:
        target = target_b.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not ASCII") from None
    if not target.startswith("/"):
        raise HttpError(400, "request target must be an absolute path")
    split = urlsplit(target)
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    headers = _headers(lines[1:])
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == b"HTTP/1.1" else connection == "keep-alive"
    return RequestHead(
        method_b.decode("ascii"), unquote(split.path), query, headers, _length(headers), keep_alive
    )


def format_response(
    status: int,
    body: bytes = b"",
    *,
    keep_alive: bool = True,
    content_type: str = "application/octet-stream",
    extra: dict[str, str] | None = None,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Length: {len(body)}"]
    if body:
        lines.append(f"Content-Type: {content_type}")
    if not keep_alive:
        lines.append("Connection: close")
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def format_request(
    method: str,
    target: str,
    host: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{key}: {value}" for key, value in (headers or {}).items())
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: dict[str, str]
    content_length: int
    keep_alive: bool


def parse_response_head(head: bytes) -> ResponseHead:
    if len(head) > MAX_HEAD:
        raise HttpError(502, f"response head longer than {MAX_HEAD} bytes")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if (
        len(parts) < 2
        or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or not parts[1].isdigit()
        or len(parts[1]) != 3
    ):
        raise HttpError(502, f"malformed status line {lines[0][:60]!r}")
    headers = _headers(lines[1:])
    keep_alive = headers.get("connection", "").lower() != "close" and parts[0] == b"HTTP/1.1"
    return ResponseHead(int(parts[1]), headers, _length(headers), keep_alive)
