"""The KPS listener: one UDP socket, the demultiplexer, the QUIC router, server connections.

The socket is shared with the WebRTC side through ``listener.demux.webrtc`` (see ``udp``).
New QUIC connections are admitted by ``QuicRouter`` (limit, refusals, Retry), must finish their
handshake within ``kps.handshake_timeout``, and are handed to ``on_connection`` only once the
handshake is complete.

Address validation: once ``kps.retry_threshold`` handshakes are in flight (default 16;
0 = always), a new client must come back with a Retry token before any connection state is
made for it (``retry``), so a flood of Initials from spoofed sources costs one small stateless
reply each and never fills the connection table.

Memory: each connection's receive window comes out of a listener-wide ``ReceiveBudget``
(``budget``; ``kps.receive_budget``, ``kps.min_connection_window``), and once connections
holding enough bytes have ended, ``Reclaimer`` runs one cyclic collection and ``malloc_trim``
so the process gives the memory back (docs/kps.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from qh3.quic.configuration import QuicConfiguration

from ...identity import Identity
from ...stream import RemoteIdentity
from ..budget import ReceiveBudget
from ..settings import KpsSettings
from ..udp import DatagramDemux, open_demux
from .configuration import CID_LENGTH, GatedQuicConnection, server_configuration
from .connection import KpsConnection
from .probe import ProbeAnsweringQuicConnection
from .reclaim import Reclaimer
from .retry import RetryTokens
from .router import Action, Decision, QuicRouter
from .session import Address, KpsSession

log = logging.getLogger("keywire.kps")

OnConnection = Callable[[KpsConnection], Awaitable[None]]

#: seconds without a large connection finishing before memory is reclaimed, and the most a
#: reclaim is put off by connections that keep finishing
RECLAIM_SETTLE = 1.0
#: who a KPS client is to the listener (nobody: clients are not authenticated); frozen, shared
_ANONYMOUS = RemoteIdentity()
RECLAIM_MAX_DELAY = 10.0
#: seconds between two "under load" log lines (Retries, refusals)
LOAD_LOG_INTERVAL = 60.0
#: further reclaims (``Reclaimer.interval`` apart) while finished connections are still alive
RECLAIM_FOLLOW_UPS = 6
#: a finished connection holding this many bytes is watched until it is freed
RECLAIM_TRACKED = 256 << 10


class KpsListener:
    """Serves KPS over QUIC on one UDP port; ``start`` binds, ``close`` stops everything."""

    #: the session core each connection gets (WebTransport's adds its HTTP/3 layer)
    session_class: type[KpsSession] = KpsSession

    def __init__(
        self, identity: Identity, settings: KpsSettings, on_connection: OnConnection
    ) -> None:
        self.identity = identity
        self.settings = settings
        self._on_connection = on_connection
        self._configs: dict[int, QuicConfiguration] = {}
        #: settings per granted window, shared by the connections that got it
        self._shared_settings: dict[int, KpsSettings] = {}
        #: receive windows shared out of ``kps.receive_budget``
        self.budget = ReceiveBudget(
            total=settings.receive_budget,
            floor=settings.min_connection_window,
            ceiling=settings.connection_window,
        )
        self._windows: dict[int, int] = {}
        # the hooks every connection gets, bound once (a bound method per connection and hook
        # is 64 bytes of each idle connection)
        self._send_hook = self._send_many
        self._cid_hook = self._on_cid
        self._finished_hook = self._on_finished
        self.reclaimer = Reclaimer()
        self._reclaim_handle: asyncio.TimerHandle | None = None
        self._reclaim_since = 0.0
        self._follow_ups = 0
        self._load_logged_at: float | None = None
        #: finished connections that held many bytes and are not yet freed
        self._released: weakref.WeakSet[KpsConnection] = weakref.WeakSet()
        self.router = QuicRouter(
            cid_length=CID_LENGTH,
            max_connections=settings.max_connections,
            replies_per_second=settings.refusals_per_second,
            tokens=RetryTokens(),
            retry_threshold=settings.retry_threshold,
        )
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
        router = self.router
        for data in datagrams:
            conn = router.short_header_target(data)
            if conn is None:
                decision = router.classify(data, addr, now)
                if decision.action is Action.DELIVER:
                    conn = decision.target
            if conn is not None and conn is target:
                batch.append(data)
                continue
            if target is not None:
                self._deliver(target, batch, addr)
            batch, target = [], None
            if conn is not None:
                batch, target = [data], conn
            elif self._closing:
                continue
            elif decision.action is Action.ACCEPT:
                # the rest of a ClientHello split over datagrams usually comes in the same
                # burst: take it before answering, so no ACK-only datagram goes out first
                target = self._accept(data, addr, decision)
            elif decision.action is Action.REFUSE:
                self._refuse(data, addr, decision)
            elif decision.action is Action.REPLY:
                self._send(decision.reply, addr)
                if decision.reason.endswith("(Retry)") and self.router.retry_threshold > 0:
                    self._note_load(now)  # (with the threshold at 0 every client is retried)
        if target is not None:
            self._deliver(target, batch, addr)

    @staticmethod
    def _deliver(conn: KpsConnection, batch: list[bytes], addr: Address) -> None:
        if batch:
            conn.datagrams_received(batch, addr)
        else:  # just accepted, nothing more in the burst: answer its first datagram
            conn.update()

    def _send(self, data: bytes, addr: Address) -> None:
        if self.demux is not None:
            self.demux.sendto(data, addr)

    def _send_many(self, datagrams: list[bytes], addr: Address) -> None:
        if self.demux is not None:
            self.demux.sendto_many(datagrams, addr)

    def _settings_for(self, window: int) -> KpsSettings:
        if window == self.settings.connection_window:
            return self.settings
        shared = self._shared_settings.get(window)  # windows are powers of two: a few entries
        if shared is None:
            shared = self._shared_settings[window] = self._settings_with_window(window)
        return shared

    def _settings_with_window(self, window: int) -> KpsSettings:
        # the send side follows the same share: a peer that never reads the answers then
        # parks at most ``window`` queued bytes per stream too
        s = self.settings
        return dataclasses.replace(
            s,
            connection_window=window,
            stream_window=min(s.stream_window, window),
            send_buffer=min(s.send_buffer, window),
            connection_send_buffer=min(s.connection_send_buffer, window),
        )

    def _config_for(self, settings: KpsSettings) -> QuicConfiguration:
        config = self._configs.get(settings.connection_window)
        if config is None:
            config = server_configuration(self.identity, settings)
            self._configs[settings.connection_window] = config
        return config

    def _new_session(self, decision: Decision, settings: KpsSettings) -> KpsSession:
        quic = self._new_quic(
            configuration=self._config_for(settings),
            original_destination_connection_id=decision.original_dcid or decision.dcid,
            retry_source_connection_id=decision.retry_scid,
            max_streams=settings.max_streams,
        )
        return self.session_class(
            quic, connection_window=settings.connection_window, max_backlog=settings.max_streams
        )

    def _new_quic(self, **options: Any) -> GatedQuicConnection:
        """The server-side QUIC core of a new connection (a subclass adds its own options)."""
        return ProbeAnsweringQuicConnection(**options)

    def _accept(self, data: bytes, addr: Address, decision: Decision) -> KpsConnection | None:
        """Make a connection for a new client's first datagram; the caller updates it (after
        feeding it the rest of the burst). None if the datagram was not a decryptable Initial."""
        dcid = decision.dcid
        window = self.budget.grant()
        settings = self._settings_for(window)
        session = self._new_session(decision, settings)
        conn = KpsConnection(
            session,
            self._send_hook,
            settings,
            address="kps",
            remote=_ANONYMOUS,
            on_cid=self._cid_hook,
            on_finished=self._finished_hook,
        )
        conn.remote_address = addr
        session.receive_datagram(data, addr, self._loop.time() if self._loop else 0.0)
        core = session.quic._core
        if core is None or not core.received_authenticated_packet:
            self.budget.release(window)
            return None  # not a decryptable Initial: keep no state for it
        self._windows[id(conn)] = window
        self.router.add(conn, dcid, addr)
        self.router.add(conn, session.quic.host_cid)
        self.router.handshake_started(conn)
        task = asyncio.ensure_future(self._admit(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    def _refuse(self, data: bytes, addr: Address, decision: Decision) -> None:
        """Answer CONNECTION_REFUSED from a throwaway connection; nothing is kept."""
        session = self._new_session(decision, self._settings_for(self.budget.floor))
        now = self._loop.time() if self._loop else 0.0
        session.receive_datagram(data, addr, now)
        core = session.quic._core
        if core is None or not core.received_authenticated_packet:
            return
        session.refuse()
        for datagram, to in session.datagrams_to_send(now):
            self._send(datagram, to)
        self.refused += 1
        self._note_load(self._loop.time() if self._loop else 0.0)

    def _note_load(self, now: float) -> None:
        """One log line per ``LOAD_LOG_INTERVAL`` while the listener is under pressure."""
        if self._load_logged_at is not None and now - self._load_logged_at < LOAD_LOG_INTERVAL:
            return
        self._load_logged_at = now
        r = self.router
        log.warning(
            "KPS listener under load: %d handshakes in flight, %d connections; "
            "%d Retries sent, %d invalid tokens, %d refused so far",
            r.handshakes_in_flight,
            len(r),
            r.retries,
            r.bad_tokens,
            self.refused,
        )

    def _on_cid(self, conn: KpsConnection, cid: bytes, added: bool) -> None:
        if added:
            self.router.add(conn, cid)
        else:
            self.router.retire(conn, cid)

    def _on_finished(self, conn: KpsConnection) -> None:
        self.router.remove(conn)
        window = self._windows.pop(id(conn), None)
        if window is not None:
            self.budget.release(window)
        session = conn.session
        held = session.unread + session.send_buffered_total()
        self.reclaimer.freed(held)
        if held >= RECLAIM_TRACKED:
            self._released.add(conn)
        quic = session.quic
        if isinstance(quic, ProbeAnsweringQuicConnection):
            quic.drop_references()
        self._schedule_reclaim()
        if self._closing and len(self.router) == 0 and self.demux is not None:
            self.demux.close()

    def _schedule_reclaim(self) -> None:
        """Reclaim once finishing has been quiet for ``RECLAIM_SETTLE`` seconds: a finished
        connection's handler tasks and streams only become garbage once they have run."""
        if self._loop is None or self.reclaimer.pending < self.reclaimer.threshold:
            return
        now = self._loop.time()
        if self._reclaim_handle is not None:
            if now - self._reclaim_since >= RECLAIM_MAX_DELAY:
                return  # constant churn: keep the time already set
            self._reclaim_handle.cancel()
        else:
            self._reclaim_since = now
        at = max(now + RECLAIM_SETTLE, self.reclaimer.next_at(now))
        self._reclaim_handle = self._loop.call_at(at, self._reclaim)

    def _reclaim(self, follow_up: bool = False) -> None:
        self._reclaim_handle = None
        if self._loop is None:
            return
        now = self._loop.time()
        if not (follow_up or self.reclaimer.due(now)):
            return
        self.reclaimer.reclaim(now)
        # a connection leaves the table when it is finished, but its buffers become garbage
        # only once its draining period and its handler's tasks end: while any finished
        # connection is still alive after a collection, look again later (boundedly)
        if self._released and not self._closing and self._follow_ups < RECLAIM_FOLLOW_UPS:
            self._follow_ups += 1
            self._reclaim_handle = self._loop.call_at(
                now + self.reclaimer.interval, self._reclaim, True
            )
        else:
            self._follow_ups = 0

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
        finally:
            self.router.handshake_ended(conn)
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
        if self._reclaim_handle is not None:
            self._reclaim_handle.cancel()
            self._reclaim_handle = None

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the socket is released."""
        if self.demux is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.demux.closed), timeout)
