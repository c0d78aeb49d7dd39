"""The WebRTC half of a KPS listener: peers on the shared UDP socket, admitted by the STUN gate.

``WebRTCListener`` is the hook the KPS datagram demultiplexer calls (``demux.webrtc =
listener``): datagrams from a known peer address go to that peer; a STUN check from an unknown
source goes through ``StunGate`` (rate, the v2 box, integrity with the certhash-derived
password, peer cap) and only then reaches an existing peer for its ufrag or creates one. Wire v1
and v2 dialers (told apart by the check's USERNAME) share the port; they differ only in the ICE
credentials the peer's agent gets. Everything else is declined, so QUIC gets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConnectionClosed
from ...identity import Identity
from ...options import Options
from ...stream import RemoteIdentity
from .aiortc_engine import (
    AiortcLink,
    EngineError,
    RemoteDescription,
    SharedSocketIce,
    certificate_for,
)
from .connection import WebRTCConnection
from .ice import Admission, StunGate, looks_like_stun
from .sdp import client_offer
from .settings import WebRTCSettings

log = logging.getLogger("keywire.kps.webrtc")

Address = tuple[Any, ...]
SendTo = Callable[[bytes, tuple[str, int]], None]
OnConnection = Callable[[WebRTCConnection], Awaitable[None]]


@dataclass
class _Peer:
    ufrag: str
    version: int
    ice: SharedSocketIce
    link: AiortcLink
    conn: WebRTCConnection
    addresses: set[Address] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class WebRTCListener:
    """Accepts browsers (and Python dialers) over WebRTC-direct on a shared UDP socket."""

    def __init__(self, identity: Identity, sendto: SendTo, on_connection: OnConnection, *,
                 address: str = "", settings: WebRTCSettings | None = None,
                 local: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        self.identity = identity
        self.settings = settings or WebRTCSettings()
        self._sendto = sendto
        self._on_connection = on_connection
        self.address = address
        self._local = local
        self._certificate = certificate_for(identity)
        self.gate = StunGate(identity.cert_digest, self.settings.gate)
        self.peers: dict[str, _Peer] = {}
        self._by_addr: dict[Address, _Peer] = {}
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self.accepted = 0

    # -- the demultiplexer hook ------------------------------------------------------------
    def knows(self, addr: Address) -> bool:
        return addr in self._by_addr

    def datagram_received(self, data: bytes, addr: Address) -> bool:
        peer = self._by_addr.get(addr)
        if peer is not None:
            peer.ice.feed(data, (addr[0], addr[1]))
            return True
        if not looks_like_stun(data):
            return False
        if self._closing:
            return True
        verdict = self.gate.admit(data, str(addr[0]), self._loop.time(), peers=len(self.peers),
                                  existing=self.peers)
        if verdict.ufrag is None:
            return True  # silently dropped: a prober learns nothing
        peer = self.peers.get(verdict.ufrag)
        if peer is None:
            peer = self._spawn(verdict, addr)
        peer.addresses.add(addr)
        self._by_addr[addr] = peer
        peer.ice.feed(data, (addr[0], addr[1]))
        return True

    # -- peers -----------------------------------------------------------------------------
    def _spawn(self, verdict: Admission, addr: Address) -> _Peer:
        assert verdict.ufrag is not None
        ufrag = verdict.ufrag
        ipv6 = ":" in str(addr[0])
        local = self._local if (":" in self._local[0]) == ipv6 else (
            ("::" if ipv6 else "0.0.0.0"), self._local[1])
        ice = SharedSocketIce(ufrag=ufrag, password=verdict.password, sendto=self._sendto,
                              local=local)
        link = AiortcLink(ice, self._certificate, server=True)
        conn = WebRTCConnection(link, is_client=False, address=self.address,
                                remote=RemoteIdentity(), settings=self.settings.wire)
        peer = _Peer(ufrag, verdict.version, ice, link, conn)
        self.peers[ufrag] = peer
        # the dialer's offer, fabricated: its own credentials (v1: the same as the server's)
        offer = RemoteDescription(client_offer(verdict.remote_ufrag, verdict.remote_password,
                                               ipv6=ipv6, port=local[1] or 9))
        peer.task = self._loop.create_task(self._run(peer, offer))
        return peer

    async def _run(self, peer: _Peer, offer: RemoteDescription) -> None:
        conn = peer.conn
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                await peer.link.start(offer)
                await conn.wait_ready()
        except (TimeoutError, EngineError, ConnectionError, ConnectionClosed) as exc:
            log.debug("WebRTC peer %s failed to open: %s", peer.ufrag, exc)
            await conn.close(4 if isinstance(exc, TimeoutError) else 5)
            self._forget(peer)
            return
        except asyncio.CancelledError:
            await conn.close(2)
            self._forget(peer)
            raise
        self.accepted += 1
        try:
            await self._on_connection(conn)
            await conn.wait_closed()
        except Exception:
            log.exception("WebRTC connection handler failed")
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
            self._forget(peer)

    def _forget(self, peer: _Peer) -> None:
        if self.peers.get(peer.ufrag) is peer:
            del self.peers[peer.ufrag]
        for addr in peer.addresses:
            if self._by_addr.get(addr) is peer:
                del self._by_addr[addr]

    async def close(self) -> None:
        """Stop admitting peers and close every WebRTC connection."""
        self._closing = True
        peers = list(self.peers.values())
        for peer in peers:
            with contextlib.suppress(Exception):
                await peer.conn.close(2)
        tasks = [p.task for p in peers if p.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def listen_webrtc(identity: Identity, on_connection: OnConnection, *, host: str = "127.0.0.1",
                        port: int = 0, options: Options | None = None
                        ) -> tuple[WebRTCListener, Any]:
    """A WebRTC-only listener on its own UDP socket (KPS's demultiplexer, no QUIC behind it).

    Returns the listener and the demultiplexer (close both). A KPS listener shares its socket
    instead: ``attach(kps_listener.demux, …)``.
    """
    from ..udp import open_demux

    demux = await open_demux(host, port, lambda _data, _addr: None)
    return attach(demux, identity, on_connection, options=options), demux


def attach(demux: Any, identity: Identity, on_connection: OnConnection, *,
           options: Options | None = None, address: str = "") -> WebRTCListener:
    """Serve WebRTC on a KPS datagram demultiplexer's socket (``demux.webrtc = listener``)."""
    local = demux.local_address
    if not address:
        host = str(local[0])
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        address = f"kps:{shown}:{local[1]}:{identity.certhash}"
    listener = WebRTCListener(identity, demux.sendto, on_connection, address=address,
                              settings=WebRTCSettings.from_options(options),
                              local=(str(local[0]), int(local[1])))
    demux.webrtc = listener
    return listener
