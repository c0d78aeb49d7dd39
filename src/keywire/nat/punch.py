"""Coordinated simultaneous open over an established Link session (DCUtR-like; docs/nat.md).

Roles follow libp2p DCUtR: the **host** (behind NAT, running a KPS listener) starts, like
DCUtR's B; the **client** (which dialled the host through a relay) answers, like A.

1. both learn their public address with STUN from the socket the direct path will use: the
   host from its KPS listener's socket, the client from a fresh socket it will dial from;
2. host → ``connect`` (its candidates and certhash), starting a timer; client → ``connect``
   (its candidates); the timer gives the round trip;
   (a client's second round offers a predicted candidate instead, see ``_round_socket``);
3. host → ``sync``; the client dials the host's candidates at once (QUIC, pinned by the
   certhash that came through the sealed channel), the host waits half the round trip and
   sprays small UDP datagrams from its listener's socket at the client's candidates, which
   opens its NAT for the client's Initial;
4. client → ``result``; on failure the host tries again (3 attempts in all, as DCUtR advises),
   then sends ``bye``. Nothing is retried after that, so a host that never gets a direct path
   costs nothing more.

A third party cannot take the direct path over: the client accepts only a QUIC server that
proves the certhash received inside the authenticated Link channel (``PinMismatch`` otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from ..identity import Identity
from ..kps.quic.connection import KpsConnection
from ..kps.quic.dialer import dial
from ..kps.quic.listener import KpsListener
from ..kps.settings import KpsSettings
from ..kps.udp import bind_socket
from ..netinfo import addresses_for_scope
from ..stream import Stream
from .holepunch import MAX_MESSAGE, PunchError, PunchMessage, decode_message, encode_message
from .stun import Address
from .stunio import StunClient, query_demux

log = logging.getLogger("keywire.nat")

__all__ = ["OnDirect", "PunchSettings", "punch_as_client", "punch_as_host"]


@dataclasses.dataclass(frozen=True)
class PunchSettings:
    """Bounds of one upgrade attempt."""

    #: rounds (connect, connect, sync, result) before the host gives up
    attempts: int = 3
    #: the host sprays for at most this long per round, every ``spray_interval`` seconds
    spray_for: float = 2.0
    spray_interval: float = 0.05
    #: the client's QUIC handshake bound per round
    dial_timeout: float = 2.5
    #: bound on each STUN query and on waiting for the peer's next message
    stun_timeout: float = 2.0
    message_timeout: float = 10.0
    #: offer private (interface) addresses too, for two peers behind one NAT
    host_candidates: bool = True


async def _read(stream: Stream, timeout: float) -> PunchMessage:
    async with asyncio.timeout(timeout):
        try:
            head = await stream.readexactly(2)
            (size,) = struct.unpack("!H", head)
            if size > MAX_MESSAGE:
                raise PunchError(f"hole-punch message of {size} bytes (at most {MAX_MESSAGE})")
            return decode_message(await stream.readexactly(size))
        except asyncio.IncompleteReadError:
            raise PunchError("the peer ended the hole-punch stream") from None


async def _send(stream: Stream, message: PunchMessage) -> None:
    await stream.write(encode_message(message))


def _local_candidates(port: int, wanted: bool) -> list[Address]:
    if not wanted:
        return []
    return [(host, port) for host in addresses_for_scope("0.0.0.0", "private") if ":" not in host]


# -- the host (DCUtR's B) ---------------------------------------------------------------------


OnDirect = Callable[[KpsConnection], Awaitable[None]]


async def punch_as_host(
    stream: Stream,
    listener: KpsListener,
    stun: Address,
    settings: PunchSettings | None = None,
    *,
    on_direct: OnDirect | None = None,
    kps: KpsSettings | None = None,
    extra_candidates: tuple[Address, ...] = (),
) -> bool:
    """Run the host's side on ``stream``; True once the client reports a direct connection.

    In a normal round the client dials ``listener``, so the connection reaches the listener's
    handler. With ``on_direct`` given, every second round is reversed (for hosts whose NAT maps
    endpoint-dependently): the client listens, the host dials it from a fresh socket and hands
    the connection to ``on_direct``."""
    s = settings or PunchSettings()
    kps = kps or KpsSettings()
    demux = listener.demux
    if demux is None:
        raise PunchError("the KPS listener is not started")
    candidates: list[Address] = list(extra_candidates)
    public_ip: str | None = None
    try:
        mapped = await query_demux(demux, stun, timeout=s.stun_timeout)
        candidates.append(mapped.mapped)
        public_ip = mapped.mapped[0]
    except TimeoutError:
        log.info("hole punch: no STUN answer from %s; offering host addresses only", stun)
    candidates += _local_candidates(listener.port, s.host_candidates)
    loop = asyncio.get_running_loop()
    for attempt in range(s.attempts):
        started = loop.time()
        reverse = on_direct is not None and public_ip is not None and attempt % 2 == 1
        if reverse:
            assert on_direct is not None and public_ip is not None
            ok = await _reverse_round(stream, listener, public_ip, s, kps, on_direct)
        else:
            await _send(
                stream, PunchMessage("connect", tuple(candidates), listener.identity.certhash)
            )
            answer = await _read(stream, s.message_timeout)
            if answer.kind != "connect":
                raise PunchError(f"expected the client's connect, got {answer.kind!r}")
            rtt = loop.time() - started
            await _send(stream, PunchMessage("sync"))
            spray = loop.create_task(_spray(demux.sendto, answer.addrs, rtt / 2, s))
            try:
                ok = await _read_result(stream, s)
            finally:
                spray.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await spray
        log.info(
            "hole punch attempt %d (%s): %s",
            attempt + 1,
            "host dials" if reverse else "client dials",
            "direct" if ok else "failed",
        )
        if ok:
            return True
    await _send(stream, PunchMessage("bye"))
    return False


async def _read_result(stream: Stream, s: PunchSettings) -> bool:
    result = await _read(stream, s.message_timeout)
    if result.kind != "result":
        raise PunchError(f"expected the client's result, got {result.kind!r}")
    return result.ok


async def _reverse_round(
    stream: Stream,
    listener: KpsListener,
    public_ip: str,
    s: PunchSettings,
    kps: KpsSettings,
    on_direct: OnDirect,
) -> bool:
    """The host dials: it offers the *predicted* address of a fresh socket (its public IP and
    the socket's port: the first mapping of a port-preserving NAT), the client sprays at it
    from its own listener and the host dials that listener after half the round trip."""
    loop = asyncio.get_running_loop()
    sock = bind_socket("0.0.0.0", 0, dual_stack=False)
    port = int(sock.getsockname()[1])
    try:
        offer = [(public_ip, port), *_local_candidates(port, s.host_candidates)]
        started = loop.time()
        await _send(
            stream, PunchMessage("connect", tuple(offer), listener.identity.certhash, reverse=True)
        )
        answer = await _read(stream, s.message_timeout)
        if answer.kind != "connect" or answer.certhash is None:
            raise PunchError("expected the client's connect with its listener's certhash")
        rtt = loop.time() - started
        await _send(stream, PunchMessage("sync"))
        await asyncio.sleep(rtt / 2)
    except BaseException:
        sock.close()
        raise
    conn = await _dial_first(answer.addrs, answer.certhash, sock, s, kps)  # owns the socket
    ok = await _read_result(stream, s)
    if conn is None:
        return False
    if not ok:
        conn.abort(0, "the client saw no direct connection")
        return False
    await on_direct(conn)
    return True


async def _spray(
    sendto: Callable[[bytes, Address], None],
    targets: tuple[Address, ...],
    delay: float,
    s: PunchSettings,
) -> None:
    """After ``delay``, small random datagrams at every target until cancelled or done; they
    open this side's NAT mapping towards the client (QUIC drops them as undecryptable)."""
    await asyncio.sleep(delay)
    deadline = asyncio.get_running_loop().time() + s.spray_for
    while asyncio.get_running_loop().time() < deadline:
        for target in targets:
            with contextlib.suppress(OSError):
                sendto(os.urandom(12), target)
        await asyncio.sleep(s.spray_interval)


# -- the client (DCUtR's A) -------------------------------------------------------------------


async def _stun_socket(stun: Address, timeout: float) -> tuple[socket.socket, Address | None]:
    """A fresh UDP socket and its public address as ``stun`` sees it (None: no answer)."""
    sock = bind_socket("0.0.0.0", 0, dual_stack=False)
    loop = asyncio.get_running_loop()

    def send(data: bytes, addr: Address) -> None:
        sock.sendto(data, addr)

    client = StunClient(send)

    async def receive() -> None:
        while True:
            data, addr = await loop.sock_recvfrom(sock, 2048)
            client.feed(data, addr)

    reader = loop.create_task(receive())
    keep = False
    try:
        result, _ = await client.binding(stun, timeout=timeout)
        keep = True
        return sock, result.mapped
    except TimeoutError:
        keep = True
        return sock, None
    finally:
        # the pending receive goes first: a socket closed under it frees its fd number for the
        # next socket while asyncio still watches it
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await reader
        if not keep:
            sock.close()


async def _listen_round(
    stream: Stream, offer: PunchMessage, stun: Address, s: PunchSettings, kps: KpsSettings
) -> KpsConnection | None:
    """A reversed round: listen on a fresh socket (its own certhash, its STUN mapping), spray
    at the host's predicted address when ``sync`` comes, and take the host's connection."""
    arrived: asyncio.Future[KpsConnection] = asyncio.get_running_loop().create_future()

    async def on_connection(conn: KpsConnection) -> None:
        if not arrived.done() and conn.remote_address is not None:
            arrived.set_result(conn)
        else:
            conn.abort(0, "one direct connection per round")

    listener = KpsListener(Identity.generate(), kps, on_connection)
    await listener.start("0.0.0.0", 0)
    keep = False
    try:
        assert listener.demux is not None
        ours: list[Address] = []
        with contextlib.suppress(TimeoutError):
            ours.append((await query_demux(listener.demux, stun, timeout=s.stun_timeout)).mapped)
        ours += _local_candidates(listener.port, s.host_candidates)
        await _send(stream, PunchMessage("connect", tuple(ours), listener.identity.certhash))
        sync = await _read(stream, s.message_timeout)
        if sync.kind != "sync":
            raise PunchError(f"expected sync, got {sync.kind!r}")
        spray = asyncio.ensure_future(_spray(listener.demux.sendto, offer.addrs, 0.0, s))
        try:
            async with asyncio.timeout(s.dial_timeout + 1.0):
                conn = await asyncio.shield(arrived)
        except TimeoutError:
            conn = None
        finally:
            spray.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spray
        await _send(stream, PunchMessage("result", ok=conn is not None))
        keep = conn is not None
        return conn
    finally:
        # stop accepting; a connection that won keeps the socket until it ends
        await listener.close(abort_connections=not keep)


async def _round_socket(
    stun: Address, attempt: int, public_ip: str | None, s: PunchSettings
) -> tuple[socket.socket, Address | None, str | None]:
    """The socket for round ``attempt`` and the candidate it offers.

    Even rounds ask STUN from the socket itself (right for any endpoint-independent NAT, port
    preserved or not). Odd rounds, once the public IP is known, offer a *predicted* candidate
    instead: the public IP and the socket's own port, asking nothing, so the dial to the host
    is the socket's first mapping, which a port-preserving endpoint-dependent NAT keeps."""
    if attempt % 2 == 1 and public_ip is not None:
        sock = bind_socket("0.0.0.0", 0, dual_stack=False)
        return sock, (public_ip, int(sock.getsockname()[1])), public_ip
    sock, mapped = await _stun_socket(stun, s.stun_timeout)
    return sock, mapped, mapped[0] if mapped is not None else public_ip


async def _dial_first(
    targets: tuple[Address, ...],
    certhash: str,
    sock: socket.socket,
    s: PunchSettings,
    kps: KpsSettings,
) -> KpsConnection | None:
    """Dial every candidate at once (the first from the STUN-mapped socket), keep the first
    that completes a pinned handshake and close the rest."""
    settings = dataclasses.replace(kps, handshake_timeout=s.dial_timeout)
    tasks = []
    for index, (host, port) in enumerate(targets):
        own = sock if index == 0 else None
        tasks.append(asyncio.ensure_future(dial(host, port, certhash, settings, sock=own)))
    if not tasks:
        sock.close()
        return None
    winner: KpsConnection | None = None
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                winner = await next_done
                break
            except Exception as exc:  # PinMismatch included: that candidate is not the host
                log.info("hole punch: a candidate failed: %s", exc)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                other = await task
                if other is not winner:
                    other.abort(0, "another path won")
    return winner


async def punch_as_client(
    stream: Stream,
    stun: Address,
    settings: PunchSettings | None = None,
    kps: KpsSettings | None = None,
) -> KpsConnection | None:
    """Run the client's side on ``stream``: a direct ``KpsConnection`` to the host, pinned by
    the certhash the host sent through the session, or None when the host gives up."""
    s = settings or PunchSettings()
    kps = kps or KpsSettings()
    sock: socket.socket | None = None
    public_ip: str | None = None
    mapped: Address | None = None
    forward_rounds = 0
    try:
        for _attempt in range(s.attempts):
            if sock is None:  # each round dials from a fresh socket with a fresh mapping
                sock, mapped, public_ip = await _round_socket(stun, forward_rounds, public_ip, s)
            offer = await _read(stream, s.message_timeout)
            if offer.kind == "bye":
                return None
            if offer.kind != "connect" or offer.certhash is None:
                raise PunchError("expected the host's connect with its certhash")
            if offer.reverse:
                conn = await _listen_round(stream, offer, stun, s, kps)
                if conn is not None:
                    return conn
                continue
            ours = ([mapped] if mapped else []) + _local_candidates(
                sock.getsockname()[1], s.host_candidates
            )
            await _send(stream, PunchMessage("connect", tuple(ours)))
            sync = await _read(stream, s.message_timeout)
            if sync.kind != "sync":
                raise PunchError(f"expected sync, got {sync.kind!r}")
            dial_sock, sock = sock, None  # the dial owns it from here
            conn = await _dial_first(offer.addrs, offer.certhash, dial_sock, s, kps)
            forward_rounds += 1
            if conn is not None:
                await _send(stream, PunchMessage("result", ok=True))
                return conn
            # ready before we answer, so the host's timer for the next round is fair
            sock, mapped, public_ip = await _round_socket(stun, forward_rounds, public_ip, s)
            await _send(stream, PunchMessage("result", ok=False))
        final = await _read(stream, s.message_timeout)
        if final.kind != "bye":
            raise PunchError(f"expected bye, got {final.kind!r}")
        return None
    finally:
        if sock is not None:
            sock.close()
