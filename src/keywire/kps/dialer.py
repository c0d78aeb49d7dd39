"""Dialing a KPS address over QUIC: one UDP socket per connection, the server pinned by hash."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket

from ..errors import HandshakeError, IdentityError, PinMismatch
from ..identity import decode_certhash, encode_certhash
from ..stream import RemoteIdentity
from .connection import KpsConnection
from .quic import GatedQuicConnection, client_configuration
from .session import KpsSession
from .settings import KpsSettings
from .udp import DatagramDemux, bind_socket, start_demux


async def resolve(host: str, port: int) -> tuple[str, int]:
    """An IP literal as is; a name (``localhost``) through the resolver, IPv4 first."""
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise HandshakeError(f"kps: cannot resolve {host!r}: {exc}") from None
    infos.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
    return str(infos[0][4][0]), port


async def dial(
    host: str,
    port: int,
    certhash: str,
    settings: KpsSettings,
    *,
    address: str = "",
    sock: socket.socket | None = None,
) -> KpsConnection:
    """Connect, verify the server's certificate hash inside the handshake, return the connection.

    ``sock``: a bound UDP socket to dial from (the connection owns it from then on), e.g. one
    whose NAT mapping was learned with STUN for a hole punch (``keywire.nat``).

    Raises ``PinMismatch`` when the server presents another certificate (before any application
    data), ``TimeoutError`` when the handshake does not finish in ``kps.handshake_timeout``,
    ``HandshakeError`` for any other refusal.
    """
    try:
        pin = decode_certhash(certhash)
    except IdentityError as exc:
        raise HandshakeError(f"kps: {exc}") from None
    ip, port = await resolve(host, port)
    if sock is None:
        sock = bind_socket("::" if ":" in ip else "0.0.0.0", 0, dual_stack=False)
    conn: KpsConnection | None = None

    def deliver(datagrams: list[bytes], addr: tuple[object, ...]) -> None:
        if conn is not None:
            conn.datagrams_received(datagrams, addr)

    demux = await start_demux(sock, deliver)
    quic = GatedQuicConnection(
        configuration=client_configuration(pin, settings), max_streams=settings.max_streams, pin=pin
    )
    session = KpsSession(
        quic, connection_window=settings.connection_window, max_backlog=settings.max_streams
    )
    conn = KpsConnection(
        session,
        demux.sendto_many,
        settings,
        address=address,
        remote=RemoteIdentity(certhash=certhash),
        on_finished=lambda _conn: demux.close(),
        released=demux.closed,
    )
    try:
        conn.start_client((ip, port))
        async with asyncio.timeout(settings.handshake_timeout):
            await asyncio.shield(conn.handshake)
    except TimeoutError:
        conn.abort(4, "handshake timeout")
        await _release(demux)
        raise TimeoutError(
            f"kps handshake with {ip}:{port} timed out after {settings.handshake_timeout:g} s"
        ) from None
    except BaseException as exc:
        presented = quic.peer_certificate_digest()
        if isinstance(exc, asyncio.CancelledError):
            with contextlib.suppress(Exception):
                conn.abort(1, "dial cancelled")
            demux.close()
            raise
        await _release(demux)
        if presented is not None and presented != pin:
            raise PinMismatch(certhash, encode_certhash(presented)) from None
        raise HandshakeError(f"kps handshake with {ip}:{port} failed: {exc}") from None
    return conn


async def _release(demux: DatagramDemux) -> None:
    """Close a failed dial's socket and wait (briefly) until it is really gone."""
    demux.close()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(demux.closed), 1.0)
