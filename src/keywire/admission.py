"""What one source may hold of a server before it has proved anything (issue 18).

A cap on connections alone lets one IP take all of them; each server therefore gives a source
at most a share of its cap, and says so on stderr at most once per ``LOG_EVERY`` seconds per
reason rather than once per refusal. ``SourceCookie`` and ``HashSlots`` serve datagram
listeners, where the source address itself can be forged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import resource
import time
from typing import Any
from urllib.parse import urlsplit

#: seconds between two log lines for the same limit
LOG_EVERY = 10.0


def per_ip_share(max_connections: int) -> int:
    """Connections one IP may hold (handshaking and established together): half the cap, so
    one source can never lock out the rest; at least 2, so tiny caps still serve a client."""
    return max(2, max_connections // 2)


def source_ip(peer: str) -> str | None:
    """The IP of a pipe's peer text (``net:IP:PORT``, ``net:::1:PORT``, ``ws://IP:PORT``,
    ``ws://[::1]:PORT``); None for local kinds (unix sockets, onion), which share no address
    to count by."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("ws", "wss"):
        return urlsplit(peer).hostname
    if scheme != "net" or ":" not in rest:
        return None
    return rest.rsplit(":", 1)[0]


class LimitLog:
    """Counts refusals per reason and logs one line per reason every ``LOG_EVERY`` seconds."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY) -> None:
        self._log = logger
        self._every = every
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def hit(self, reason: str, source: str | None = None) -> None:
        self._count[reason] = self._count.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last.get(reason, -self._every) < self._every:
            return
        self._last[reason] = now
        count, self._count[reason] = self._count[reason], 0
        self._log.warning(
            "limit reached: %s (%d refused since the last report; last from %s)",
            reason,
            count,
            source or "?",
        )


#: what asyncio says, through the loop's exception handler, each time accept() hits EMFILE
ACCEPT_EXHAUSTED = "socket.accept() out of system resource"


def quiet_accept_exhaustion(loop: asyncio.AbstractEventLoop, limits: LimitLog) -> None:
    """Turn asyncio's report of an exhausted ``accept()`` (a traceback every retry, for every
    listener) into ``limits``' one line; every other report goes where it went before."""
    previous = loop.get_exception_handler()
    if getattr(previous, "keywire_accept_filter", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_EXHAUSTED:
            limits.hit("no file descriptors left to accept with")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.keywire_accept_filter = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def ensure_fd_room(wanted: int) -> None:
    """Raise the soft fd limit toward ``wanted`` (never above the hard limit), so a server's
    own connection cap is reached before the process runs out of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class SourceCookie:
    """A stateless proof that a source receives what is sent to it: a keyed MAC of its
    address and the current time window. Only a peer that got the cookie can echo it, so a
    spoofed source address never passes, and nothing is stored per source to check it (a
    cookie of the current or the previous window is accepted: it lives 1–2 ``window``s)."""

    def __init__(self, size: int = 12, window: float = 10.0, key: bytes | None = None) -> None:
        if not 4 <= size <= 32 or not window > 0:
            raise ValueError("a source cookie has 4..32 bytes and a window > 0 s")
        self.size = size
        self.window = window
        self._key = key if key is not None else os.urandom(32)

    def make(self, source: str, now: float) -> bytes:
        return self._mac(source, int(now // self.window))

    def valid(self, source: str, cookie: bytes, now: float) -> bool:
        epoch = int(now // self.window)
        return any(hmac.compare_digest(cookie, self._mac(source, e)) for e in (epoch, epoch - 1))

    def _mac(self, source: str, epoch: int) -> bytes:
        message = epoch.to_bytes(8, "big", signed=True) + source.encode("utf-8", "replace")
        return hmac.new(self._key, message, hashlib.sha256).digest()[: self.size]


class HashSlots[T]:
    """A table of fixed size for state about sources that have proved nothing: each source
    has one slot, chosen by a keyed hash, and a newcomer overwrites whoever was there. It
    cannot grow, and as the key is secret nobody can aim a flood at one source's slot."""

    def __init__(self, size: int, key: bytes | None = None) -> None:
        if size < 1:
            raise ValueError("a slot table has at least one slot")
        self._slots: list[tuple[str, T] | None] = [None] * size
        self._key = key if key is not None else os.urandom(16)

    def _index(self, source: str) -> int:
        digest = hashlib.blake2b(source.encode("utf-8", "replace"), key=self._key, digest_size=8)
        return int.from_bytes(digest.digest(), "big") % len(self._slots)

    def put(self, source: str, value: T) -> None:
        self._slots[self._index(source)] = (source, value)

    def take(self, source: str) -> T | None:
        """The value ``source`` left, if nobody overwrote it since; its slot is emptied."""
        index = self._index(source)
        entry = self._slots[index]
        if entry is None or entry[0] != source:
            return None
        self._slots[index] = None
        return entry[1]

    def __len__(self) -> int:
        return sum(1 for entry in self._slots if entry is not None)
