"""The WebRTC half of a KPS listener: peers on the shared UDP socket, admitted by the STUN gate.

``WebRTCListener`` is the hook the KPS datagram demultiplexer calls (``demux.webrtc =
listener``): datagrams from a known peer address go to that peer; a STUN check from an unknown
source goes through ``StunGate`` (rate, the v2 box, integrity with the certhash-derived
password, cap on established peers). Wire v1 and v2 dialers (told apart by the check's USERNAME)
share the port; they differ only in the ICE credentials the peer's agent gets. Everything else
is declined, so QUIC gets it.

Admission (docs/webrtc.md): anyone with the address can make valid checks, and UDP source
addresses can be forged, so a check creates nothing. A check from an address not yet shown to
receive gets a Binding request back whose transaction id is a keyed MAC of the address and time
(``challenge.py``); only the check itself is kept, in one slot of a fixed table a newcomer
overwrites. When the dialer's agent echoes the id, the address is believed: the check is
answered statelessly and remembered (bounded, short-lived); a peer (ICE agent, DTLS, SCTP) is
made only when a DTLS ClientHello comes from an answered address, and the remembered check and
the ClientHello are then fed to it. Peers that have not finished DTLS
have their own cap (``max_pending``) and deadline (``pending_timeout``); a newcomer over the cap
evicts the oldest unfinished peer of the source holding the most of them, and one source (IPv4
address, IPv6 /64) holds at most ``source_share`` of ``max_peers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ...admission import HashSlots, SourceCookie
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
from .challenge import challenge_request, is_binding_success, transaction_id
from .connection import WebRTCConnection
from .ice import (
    Admission,
    StunGate,
    binding_success,
    is_dtls_client_hello,
    looks_like_stun,
    source_key,
)
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
    #: ``source_key`` of the address that made it
    source: str = ""
    #: True until its DTLS handshake finished
    pending: bool = True
    started: float = 0.0
    addresses: set[Address] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


@dataclass
class _Answered:
    """An address whose valid check was answered: what a ClientHello from it may start."""

    admission: Admission
    check: bytes
    expires: float


class WebRTCListener:
    """Accepts browsers (and Python dialers) over WebRTC-direct on a shared UDP socket."""

    def __init__(
        self,
        identity: Identity,
        sendto: SendTo,
        on_connection: OnConnection,
        *,
        address: str = "",
        settings: WebRTCSettings | None = None,
        local: tuple[str, int] = ("0.0.0.0", 0),
    ) -> None:
        self.identity = identity
        self.settings = settings or WebRTCSettings()
        self._sendto = sendto
        self._on_connection = on_connection
        self.address = address
        self._local = local
        self._certificate = certificate_for(identity)
        self.gate = StunGate(identity.cert_digest, self.settings.gate)
        #: every peer by ufrag, oldest first
        self.peers: dict[str, _Peer] = {}
        self._by_addr: dict[Address, _Peer] = {}
        self._answered: OrderedDict[Address, _Answered] = OrderedDict()
        gate = self.settings.gate
        #: the return-routability check: cookies, the one check kept per unproven address
        #: (fixed size), and the addresses that echoed a cookie (bounded, short-lived)
        self._cookie = SourceCookie(window=gate.answered_ttl)
        self._unproven: HashSlots[_Answered] = HashSlots(gate.max_answered)
        self._proven: OrderedDict[Address, float] = OrderedDict()
        self._tiebreaker = secrets.randbits(64)
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self.accepted = 0

    # -- the demultiplexer hook ------------------------------------------------------------
    def knows(self, addr: Address) -> bool:
        """A peer's address, or one that was answered (its ClientHello must reach us)."""
        return addr in self._by_addr or addr in self._answered

    def datagram_received(self, data: bytes, addr: Address) -> bool:
        peer = self._by_addr.get(addr)
        if peer is not None:
            peer.ice.feed(data, (addr[0], addr[1]))
            return True
        if looks_like_stun(data):
            if self._closing:
                pass
            elif is_binding_success(data):
                self._echoed(data, addr)
            else:
                self._check(data, addr)
            return True
        if is_dtls_client_hello(data) and not self._closing:
            return self._client_hello(data, addr)
        return False

    def _check(self, data: bytes, addr: Address) -> None:
        now = self._loop.time()
        established = sum(1 for p in self.peers.values() if not p.pending)
        verdict = self.gate.admit(data, str(addr[0]), now, peers=established, existing=self.peers)
        if verdict.ufrag is None:
            return  # silently dropped: a prober learns nothing
        peer = self.peers.get(verdict.ufrag)
        if peer is not None:  # another address of a dialer that has a peer
            self._attach(peer, data, addr)
            return
        if addr not in self._answered and not self._is_proven(addr, now):
            self._challenge(verdict, data, addr, now)
            return
        self._answer(verdict, data, addr, now)

    def _attach(self, peer: _Peer, data: bytes, addr: Address) -> None:
        peer.addresses.add(addr)
        self._by_addr[addr] = peer
        peer.ice.feed(data, (addr[0], addr[1]))

    # -- return routability ----------------------------------------------------------------
    def _challenge(self, verdict: Admission, data: bytes, addr: Address, now: float) -> None:
        """Ask an unproven address to echo a cookie; keep its check in its slot meanwhile."""
        key = _source_text(addr)
        ttl = self.gate.settings.answered_ttl
        self._unproven.put(key, _Answered(verdict, data, now + ttl))
        request = challenge_request(verdict, self._cookie.make(key, now), self._tiebreaker)
        self._sendto(request, (str(addr[0]), int(addr[1])))
        self._count("challenged")

    def _echoed(self, data: bytes, addr: Address) -> None:
        """A Binding success from an unknown address: the echo of a challenge, if its
        transaction id is the address's cookie; then the address is proven and its kept
        check (if no newcomer overwrote the slot) is answered now."""
        now = self._loop.time()
        key = _source_text(addr)
        if not self._cookie.valid(key, transaction_id(data), now):
            self._count("bad-echo")
            return
        self._count("proven")
        settings = self.gate.settings
        self._proven.pop(addr, None)
        self._proven[addr] = now + settings.answered_ttl
        while self._proven:
            first = next(iter(self._proven.values()))
            if len(self._proven) <= settings.max_answered and first > now:
                break
            self._proven.popitem(last=False)
        entry = self._unproven.take(key)
        if entry is None or entry.expires <= now:
            return  # the dialer's next check (it retransmits) is answered
        assert entry.admission.ufrag is not None
        peer = self.peers.get(entry.admission.ufrag)
        if peer is not None:
            self._attach(peer, entry.check, addr)
        else:
            self._answer(entry.admission, entry.check, addr, now)

    def _is_proven(self, addr: Address, now: float) -> bool:
        expires = self._proven.get(addr)
        return expires is not None and expires > now

    def _answer(self, verdict: Admission, data: bytes, addr: Address, now: float) -> None:
        """Answer a check from a proven address as the agent would, and remember it (a
        nominating one wins) until a ClientHello from there shows the dialer took it."""
        self._sendto(
            binding_success(verdict, (str(addr[0]), int(addr[1]))), (str(addr[0]), int(addr[1]))
        )
        settings = self.gate.settings
        old = self._answered.pop(addr, None)
        if (
            old is not None
            and old.admission.ufrag == verdict.ufrag
            and old.admission.nominates
            and not verdict.nominates
        ):
            old.expires = now + settings.answered_ttl
            self._answered[addr] = old
        else:
            self._answered[addr] = _Answered(verdict, data, now + settings.answered_ttl)
        while self._answered:
            first = next(iter(self._answered.values()))
            if len(self._answered) <= settings.max_answered and first.expires > now:
                break
            self._answered.popitem(last=False)
        self.gate.counters["answered"] = self.gate.counters.get("answered", 0) + 1

    def _client_hello(self, data: bytes, addr: Address) -> bool:
        entry = self._answered.get(addr)
        if entry is None or entry.expires <= self._loop.time():
            return False
        verdict = entry.admission
        assert verdict.ufrag is not None
        if verdict.ufrag in self.peers:
            return False  # (the dialer's peer exists under another address)
        source = source_key(str(addr[0]))
        if not self._make_room(source):
            return True
        del self._answered[addr]
        peer = self._spawn(verdict, addr)
        peer.source = source
        peer.addresses.add(addr)
        self._by_addr[addr] = peer
        peer.ice.feed(entry.check, (addr[0], addr[1]))
        peer.ice.feed(data, (addr[0], addr[1]))
        return True

    def _make_room(self, source: str) -> bool:
        """Room for one more unfinished peer from ``source``, evicting an unfinished one if a
        cap is reached; False if only established peers fill it."""
        s = self.gate.settings
        pending: dict[str, list[_Peer]] = {}
        mine = 0
        for peer in self.peers.values():
            if peer.source == source:
                mine += 1
            if peer.pending:
                pending.setdefault(peer.source, []).append(peer)
        total_pending = sum(len(peers) for peers in pending.values())
        if mine >= s.share(s.max_peers):
            victims = pending.get(source)
            if not victims:
                self._count("source-cap")
                return False
        elif total_pending >= s.max_pending or len(self.peers) >= s.max_peers:
            if not pending:
                self._count("peer-cap")
                return False
            # the source holding the most unfinished peers loses its oldest (ties: the oldest)
            most = max(len(peers) for peers in pending.values())
            victims = min(
                (peers for peers in pending.values() if len(peers) == most),
                key=lambda peers: peers[0].started,
            )
        else:
            return True
        self._evict(victims[0])
        return True

    def _evict(self, peer: _Peer) -> None:
        self._count("evicted")
        self._forget(peer)
        if peer.task is not None:
            peer.task.cancel()

    def _count(self, name: str) -> None:
        self.gate.counters[name] = self.gate.counters.get(name, 0) + 1

    # -- peers -----------------------------------------------------------------------------
    def _spawn(self, verdict: Admission, addr: Address) -> _Peer:
        assert verdict.ufrag is not None
        ufrag = verdict.ufrag
        ipv6 = ":" in str(addr[0])
        local = (
            self._local
            if (":" in self._local[0]) == ipv6
            else (("::" if ipv6 else "0.0.0.0"), self._local[1])
        )
        ice = SharedSocketIce(
            ufrag=ufrag, password=verdict.password, sendto=self._sendto, local=local
        )
        link = AiortcLink(ice, self._certificate, server=True)
        conn = WebRTCConnection(
            link,
            is_client=False,
            address=self.address,
            remote=RemoteIdentity(),
            settings=self.settings.wire,
        )
        peer = _Peer(ufrag, verdict.version, ice, link, conn, started=self._loop.time())
        self.peers[ufrag] = peer
        # the dialer's offer, fabricated: its own credentials (v1: the same as the server's)
        offer = RemoteDescription(
            client_offer(
                verdict.remote_ufrag, verdict.remote_password, ipv6=ipv6, port=local[1] or 9
            )
        )
        peer.task = self._loop.create_task(self._run(peer, offer))
        return peer

    async def _run(self, peer: _Peer, offer: RemoteDescription) -> None:
        conn = peer.conn
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                async with asyncio.timeout(self.gate.settings.pending_timeout):
                    await peer.link.start(offer)
                peer.pending = False
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
        self._answered.clear()
        self._proven.clear()
        peers = list(self.peers.values())
        for peer in peers:
            with contextlib.suppress(Exception):
                await peer.conn.close(2)
        tasks = [p.task for p in peers if p.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def listen_webrtc(
    identity: Identity,
    on_connection: OnConnection,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    options: Options | None = None,
) -> tuple[WebRTCListener, Any]:
    """A WebRTC-only listener on its own UDP socket (KPS's demultiplexer, no QUIC behind it).

    Returns the listener and the demultiplexer (close both). A KPS listener shares its socket
    instead: ``attach(kps_listener.demux, …)``.
    """
    from ..udp import open_demux

    demux = await open_demux(host, port, lambda _data, _addr: None)
    return attach(demux, identity, on_connection, options=options), demux


def _source_text(addr: Address) -> str:
    """An address as the cookie and slot key: host and port (ICE pairs are per port)."""
    return f"{addr[0]}|{addr[1]}"


def attach(
    demux: Any,
    identity: Identity,
    on_connection: OnConnection,
    *,
    options: Options | None = None,
    address: str = "",
) -> WebRTCListener:
    """Serve WebRTC on a KPS datagram demultiplexer's socket (``demux.webrtc = listener``)."""
    local = demux.local_address
    if not address:
        host = str(local[0])
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        address = f"kps:{shown}:{local[1]}:{identity.certhash}"
    listener = WebRTCListener(
        identity,
        demux.sendto,
        on_connection,
        address=address,
        settings=WebRTCSettings.from_options(options),
        local=(str(local[0]), int(local[1])),
    )
    demux.webrtc = listener
    return listener
