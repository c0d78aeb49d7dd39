"""The KPS listener: one UDP socket, the demultiplexer, the QUIC router, server connections.

The socket is shared with the WebRTC side through ``listener.demux.webrtc`` (see ``udp``).
New QUIC connections are admitted by ``QuicRouter`` (limit, refusals), must finish their
handshake within ``kps.handshake_timeout``, and are handed to ``on_connection`` only once the
handshake is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..identity import Identity
from ..stream import RemoteIdentity
from .connection import KpsConnection
from .quic import CID_LENGTH, GatedQuicConnection, server_configuration
from .router import Action, QuicRouter
from .session import Address, KpsSession
from .settings import KpsSettings
from .udp import DatagramDemux, open_demux

log = logging.getLogger("keywire.kps")

OnConnection = Callable[[KpsConnection], Awaitable[None]]


class KpsListener:
    """Serves KPS over QUIC on one UDP port; ``start`` binds, ``close`` stops everything."""

    def __init__(self, identity: Identity, settings: KpsSettings,
                 on_connection: OnConnection) -> None:
        self.identity = identity
        self.settings = settings
        self._on_connection = on_connection
        self._config = server_configuration(identity, settings)
        self.router = QuicRouter(cid_length=CID_LENGTH, max_connections=settings.max_connections,
                                 replies_per_second=settings.refusals_per_second)
        self.demux: DatagramDemux | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.refused = 0

    async def start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.demux = await open_demux(host, port, self._quic_datagrams)

    @property
    def port(self) -> int:
        assert self.demux is not None
        return int(self.demux.local_address[1])

    @property
    def connections(self) -> list[KpsConnection]:
        return self.router.connections()

    # -- datagrams from the demultiplexer ---------------------------------------------------------
    def _quic_datagrams(self, datagrams: list[bytes], addr: Address) -> None:
        if self._loop is None:
            return
        now = self._loop.time()
        batch: list[bytes] = []
        target: KpsConnection | None = None
        for data in datagrams:
            decision = self.router.classify(data, addr, now)
            if decision.action is Action.DELIVER and decision.target is target:
                batch.append(data)
                continue
            if batch and target is not None:
                target.datagrams_received(batch, addr)
            batch, target = [], None
            if decision.action is Action.DELIVER:
                batch, target = [data], decision.target
            elif self._closing:
                continue
            elif decision.action is Action.ACCEPT:
                self._accept(data, addr, decision.dcid)
            elif decision.action is Action.REFUSE:
                self._refuse(data, addr, decision.dcid)
            elif decision.action is Action.REPLY:
                self._send(decision.reply, addr)
        if batch and target is not None:
            target.datagrams_received(batch, addr)

    def _send(self, data: bytes, addr: Address) -> None:
        if self.demux is not None:
            self.demux.sendto(data, addr)

    def _send_many(self, datagrams: list[bytes], addr: Address) -> None:
        if self.demux is not None:
            self.demux.sendto_many(datagrams, addr)

    def _new_session(self, dcid: bytes) -> KpsSession:
        quic = GatedQuicConnection(configuration=self._config,
                                   original_destination_connection_id=dcid,
                                   max_streams=self.settings.max_streams)
        return KpsSession(quic, connection_window=self.settings.connection_window,
                          max_backlog=self.settings.max_streams)

    def _accept(self, data: bytes, addr: Address, dcid: bytes) -> None:
        session = self._new_session(dcid)
        conn = KpsConnection(session, self._send_many, self.settings, address="kps",
                             remote=RemoteIdentity(), on_cid=self._on_cid,
                             on_finished=self._on_finished)
        conn.remote_address = addr
        session.receive_datagram(data, addr, self._loop.time() if self._loop else 0.0)
        core = session.quic._core
        if core is None or not core.received_authenticated_packet:
            return  # not a decryptable Initial: keep no state for it
        self.router.add(conn, dcid, addr)
        self.router.add(conn, session.quic.host_cid)
        conn._process()
        conn._transmit()
        task = asyncio.ensure_future(self._admit(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, data: bytes, addr: Address, dcid: bytes) -> None:
        """Answer CONNECTION_REFUSED from a throwaway connection; nothing is kept."""
        session = self._new_session(dcid)
        now = self._loop.time() if self._loop else 0.0
        session.receive_datagram(data, addr, now)
        core = session.quic._core
        if core is None or not core.received_authenticated_packet:
            return
        session.refuse()
        for datagram, to in session.datagrams_to_send(now):
            self._send(datagram, to)
        self.refused += 1

    def _on_cid(self, conn: KpsConnection, cid: bytes, added: bool) -> None:
        if added:
            self.router.add(conn, cid)
        else:
            self.router.retire(conn, cid)

    def _on_finished(self, conn: KpsConnection) -> None:
        self.router.remove(conn)
        if self._closing and len(self.router) == 0 and self.demux is not None:
            self.demux.close()

    async def _admit(self, conn: KpsConnection) -> None:
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                await asyncio.shield(conn.handshake)
        except TimeoutError:
            conn.abort(4, "handshake timeout")
            return
        except asyncio.CancelledError:
            conn.abort(1, "listener closed")
            raise
        except Exception as exc:
            log.debug("KPS handshake from %s failed: %s", conn.remote_address, exc)
            return
        if self._closing:
            conn.abort(1, "listener closed")
            return
        if conn.remote_address is not None and not conn.finished:
            # (a peer that closes right after its Finished, as quiche's post-handshake pin
            # check does, may already be finished and removed: re-adding it would keep it, and
            # the listener's socket, forever)
            self.router.add(conn, conn.session.quic.host_cid, conn.remote_address)
        try:
            await self._on_connection(conn)
        except Exception as exc:  # the listener outlives every bad connection handler
            log.debug("KPS connection handler failed: %s", exc)
            if not conn.closed:
                conn.abort(11, "handler failed")

    async def close(self, *, abort_connections: bool = False) -> None:
        """Stop accepting new connections.

        Established connections keep the socket until they end (the server closes them, or
        their idle timeout does); ``abort_connections`` closes them now with code 0 and
        releases the socket at once.
        """
        if not self._closing:
            self._closing = True
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self.router.connections():
            if abort_connections and not conn.closed:
                conn.abort(0, "listener closed")
            if conn.closed:
                # already ended: its closing/draining period is not worth holding the port
                conn._finish_now()
        if len(self.router) == 0 and self.demux is not None:
            self.demux.close()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the socket is released."""
        if self.demux is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.demux.closed), timeout)
