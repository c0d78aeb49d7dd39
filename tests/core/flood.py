"""Tools for the bounded attack tests: many idle sockets from chosen loopback sources, and
what a process holds (fds, RSS). Linux only: the whole 127/8 is local, so each 127.x.y.z is a
distinct source IP without any setup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
from collections.abc import AsyncIterator, Iterator


def raise_nofile(wanted: int = 16384) -> None:
    """Let this test process hold ``wanted`` sockets (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def fd_count(pid: int | None = None) -> int:
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def sources(count: int, base: str = "127.0.1.") -> list[str]:
    """``count`` distinct loopback source addresses."""
    return [f"{base}{i}" for i in range(1, count + 1)]


def idle_sockets(
    port: int, per_source: int, ips: list[str], host: str = "127.0.0.1", payload: bytes = b""
) -> list[socket.socket]:
    """Connect ``per_source`` sockets from each of ``ips`` and send each ``payload`` (then
    nothing more). A client that has sent a byte keeps retransmitting it, so the server sees
    the connection even when the kernel answered its SYN with a cookie while the accept queue
    was full; an idle one might never reach the server at all."""
    out: list[socket.socket] = []
    for ip in ips:
        for _ in range(per_source):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ip, 0))
            s.settimeout(0.5)
            with contextlib.suppress(OSError):
                s.connect((host, port))
                if payload:
                    s.send(payload)
            s.setblocking(False)
            out.append(s)
    return out


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
    socks.clear()


def closed_by_peer(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has closed (EOF or reset is waiting to be read)."""
    count = 0
    for s in socks:
        try:
            if s.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                count += 1
        except BlockingIOError:
            pass
        except OSError:
            count += 1
    return count


@contextlib.contextmanager
def flood(
    port: int, per_source: int, ips: list[str], payload: bytes = b""
) -> Iterator[list[socket.socket]]:
    socks = idle_sockets(port, per_source, ips, payload=payload)
    try:
        yield socks
    finally:
        close_all(socks)


@contextlib.asynccontextmanager
async def aflood(
    port: int, per_source: int, ips: list[str], payload: bytes = b""
) -> AsyncIterator[list[socket.socket]]:
    """``flood`` from a thread, so a server in this very event loop keeps accepting."""
    socks = await asyncio.to_thread(idle_sockets, port, per_source, ips, "127.0.0.1", payload)
    try:
        yield socks
    finally:
        close_all(socks)
