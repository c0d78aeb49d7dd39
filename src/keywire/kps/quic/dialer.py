"""Dialing a KPS address over QUIC: one UDP socket per connection, the server pinned by hash."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from ...errors import HandshakeError, IdentityError, PinMismatch
from ...identity import decode_certhash, encode_certhash
from ...stream import RemoteIdentity
from ..settings import KpsSettings
from ..udp import DatagramDemux, bind_socket, resolve, start_demux
from .configuration import GatedQuicConnection, client_configuration
from .connection import KpsConnection
from .session import KpsSession


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
    quic = GatedQuicConnection(
        configuration=client_configuration(pin, settings), max_streams=settings.max_streams, pin=pin
    )
    session = KpsSession(
        quic, connection_window=settings.connection_window, max_backlog=settings.max_streams
    )

    def mismatch() -> Exception | None:
        presented = quic.peer_certificate_digest()
        if presented is not None and presented != pin:
            return PinMismatch(certhash, encode_certhash(presented))
        return None

    remote = RemoteIdentity(certhash=certhash)
    return await connect_client(
        session, settings, (ip, port), address=address, remote=remote, sock=sock, failure=mismatch
    )


async def connect_client(
    session: KpsSession,
    settings: KpsSettings,
    peer: tuple[str, int],
    *,
    address: str,
    remote: RemoteIdentity,
    sock: socket.socket | None = None,
    failure: Callable[[], Exception | None] = lambda: None,
    name: str = "kps",
) -> KpsConnection:
    """Run ``session``'s client handshake over its own UDP socket (``sock`` or a fresh one) and
    return the connection; KPS and WebTransport dial through this.

    On failure the socket is released first, then ``failure()`` (a pin mismatch, a refusal)
    is raised if it names one, else ``HandshakeError``; ``TimeoutError`` after
    ``handshake_timeout``.
    """
    ip, port = peer
    if sock is None:
        sock = bind_socket("::" if ":" in ip else "0.0.0.0", 0, dual_stack=False)
    conn: KpsConnection | None = None

    def deliver(datagrams: list[bytes], addr: tuple[object, ...]) -> None:
        if conn is not None:
            conn.datagrams_received(datagrams, addr)

    demux = await start_demux(sock, deliver)
    conn = KpsConnection(
        session,
        demux.sendto_many,
        settings,
        address=address,
        remote=remote,
        on_finished=lambda _conn: demux.close(),
        released=demux.closed,
    )
    try:
        conn.start_client(peer)
        async with asyncio.timeout(settings.handshake_timeout):
            # awaited directly, not through ``shield`` (one event-loop pass fewer): on a timeout
            # or a cancellation the future is cancelled and the connection aborted below
            await conn.handshake
    except TimeoutError:
        conn.abort(4, "handshake timeout")
        await _release(demux)
        raise TimeoutError(
            f"{name} handshake with {ip}:{port} timed out after {settings.handshake_timeout:g} s"
        ) from None
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            with contextlib.suppress(Exception):
                conn.abort(1, "dial cancelled")
            demux.close()
            raise
        await _release(demux)
        reason = failure()
        if reason is not None:
            raise reason from None
        raise HandshakeError(f"{name} handshake with {ip}:{port} failed: {exc}") from None
    return conn


async def _release(demux: DatagramDemux) -> None:
    """Close a failed dial's socket and wait (briefly) until it is really gone."""
    demux.close()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(demux.closed), 1.0)
