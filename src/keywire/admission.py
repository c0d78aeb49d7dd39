"""What one source may hold of a server before it has proved anything (issue 18).

A cap on connections alone lets one IP take all of them; each server therefore gives a source
at most a share of its cap, and says so on stderr at most once per ``LOG_EVERY`` seconds per
reason rather than once per refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from typing import Any

#: seconds between two log lines for the same limit
LOG_EVERY = 10.0


def per_ip_share(max_connections: int) -> int:
    """Connections one IP may hold (handshaking and established together): half the cap, so
    one source can never lock out the rest; at least 2, so tiny caps still serve a client."""
    return max(2, max_connections // 2)


def source_ip(peer: str) -> str | None:
    """The IP of a pipe's peer text (``net:IP:PORT``, ``ws:IP:PORT``, ``net:::1:PORT``); None
    for local kinds (unix sockets, onion), which share no address to count by."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("net", "ws", "wss") or ":" not in rest:
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
