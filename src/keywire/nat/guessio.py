"""The many-port guess in asyncio (``keywire.nat.guess`` has the why): the random side's
socket set, and the other side's paced probes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

from ..kps.udp import bind_socket
from .guess import GuessSettings, guess_ports, is_probe, probe
from .stun import Address

log = logging.getLogger("keywire.nat")

__all__ = ["GuessSockets", "send_probes"]


class GuessSockets:
    """``count`` fresh UDP sockets, each having sent one datagram to ``target`` (so the NAT
    maps each towards it); the first to receive a probe with ``token`` from ``target`` wins.
    Made inside the event loop that will watch the sockets.

    Use as a context manager: every socket but the one taken with ``take`` is closed at the
    end, whatever happened."""

    def __init__(self, count: int, target: Address, token: bytes) -> None:
        self.target = target
        self.token = token
        self.sockets: list[socket.socket] = []
        self.won: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
        self.rejected = 0
        #: the public port of the winner (the port its probe was sent to)
        self.mapped_port: int | None = None
        self._taken: socket.socket | None = None
        self._watched: list[int] = []
        self._count = count

    def open(self) -> None:
        """Bind the sockets and send from each (random bytes; the peer's QUIC drops them)."""
        self._add(self._count)

    async def open_gradually(self, chunk: int = 32) -> None:
        """``open``, yielding to the event loop every ``chunk`` sockets (about 1.5 ms each), so
        a dial running meanwhile is not held up."""
        while len(self.sockets) < self._count:
            self._add(min(chunk, self._count - len(self.sockets)))
            await asyncio.sleep(0)

    def _add(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            for _ in range(count):
                try:
                    sock = bind_socket("0.0.0.0", 0, dual_stack=False)
                except OSError as exc:  # out of descriptors or ports: guess with fewer
                    log.info("hole punch: %d guess sockets only: %s", len(self.sockets), exc)
                    self._count = len(self.sockets)
                    return
                self.sockets.append(sock)
                loop.add_reader(sock.fileno(), self._readable, sock)
                self._watched.append(sock.fileno())
                with contextlib.suppress(OSError):  # a full queue: that socket just never wins
                    sock.sendto(os.urandom(12), self.target)
        except BaseException:
            self.close()
            raise

    def _readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP refused on a socket nobody wins with
                return
            port = is_probe(data, self.token) if (addr[0], addr[1]) == self.target else None
            if port is None:
                self.rejected += 1
            elif not self.won.done():
                n = self.sockets.index(sock)
                log.debug(
                    "guess: a probe to port %d reached socket %d of %d", port, n, len(self.sockets)
                )
                self.mapped_port = port
                self.won.set_result(sock)

    async def wait(self, timeout: float) -> socket.socket | None:
        """The winning socket, or None after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self.won)
        except TimeoutError:
            return None

    def take(self, sock: socket.socket) -> socket.socket:
        """Keep ``sock`` open past ``close`` (the QUIC dial owns it now)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(sock.fileno())
        # no longer ours to unwatch: the dial's own reader goes on this fd
        self._watched.remove(sock.fileno())
        self._taken = sock
        return sock

    def close(self) -> None:
        """Stop watching and close every socket not taken."""
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for fd in self._watched:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(fd)
        self._watched.clear()
        for sock in self.sockets:
            if sock is not self._taken:
                sock.close()
        self.sockets.clear()

    def __enter__(self) -> GuessSockets:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def send_probes(
    sendto: Callable[[bytes, Address], None],
    ip: str,
    token: bytes,
    s: GuessSettings,
    ports: list[int] | None = None,
) -> int:
    """Send ``s.probes`` probes to distinct random ports of ``ip`` (``ports``, drawn ahead
    off the critical path, else drawn now: a few ms): ``s.burst`` at once, the rest at
    ``s.rate`` per second (in bursts every 10 ms); returns how many went out. Cancel it once
    a path is up."""
    loop = asyncio.get_running_loop()
    ports = ports if ports is not None else guess_ports(s.probes)
    per_tick = max(1, round(s.rate * 0.01))
    first = max(s.burst, per_tick)
    started = loop.time()
    sent = 0
    batch = first
    log.debug("guess: the first %d probes go out", min(first, len(ports)))
    while sent < len(ports):
        for port in ports[sent : sent + batch]:
            with contextlib.suppress(OSError):
                sendto(probe(token, port), (ip, port))
        sent = min(sent + batch, len(ports))
        batch = per_tick
        # paced against the clock, so a slow tick is caught up rather than stretched
        delay = started + (sent - first + per_tick) / s.rate - loop.time()
        await asyncio.sleep(max(delay, 0.0))
    log.debug("hole punch: %d guess probes sent to %s", sent, ip)
    return sent
