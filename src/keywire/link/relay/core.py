"""The relay's protocol logic, sans-IO: sockets are ids, time is a number passed in.

The shell tells the core what happened (a socket opened, a text frame arrived, bytes were
relayed, a socket closed, time passed) and carries out the actions it returns (send a JSON
frame, close a socket with a code, start splicing a link). Nothing here blocks or does I/O.

Fixes over Link v1, all in this file:

* a host's dial-back ``accept`` must carry the ticket sent only to its registered control
  socket, so nobody else can take the host end of a link;
* a host's register pin and last timestamp outlive its socket for the whole skew window, so a
  captured ``register`` cannot be replayed after the host disconnects;
* the hourly quota is kept per host address, so new links do not reset it;
* ``stats`` shows link ids only to an admin.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..wire import (
    LinkProtocolError,
    address_for_register_key,
    b64u,
    from_b64u,
    register_signing_message,
)
from .bucket import DebtBucket, HourlyQuota
from .config import RelayConfig
from .state import Claim, MemoryState, Pin

MAX_CONTROL = 4096
MAX_FRAME = 16 * 1024 * 1024
MAX_SKEW_MS = 300_000
#: how long a pin survives its socket: the skew window plus a margin
PIN_MEMORY_SEC = MAX_SKEW_MS / 1000 + 60
USAGE_TIERS = (0.5, 0.8, 0.95, 1.0)
_FORBIDDEN_FIELDS = frozenset({"code", "pairingCode", "password", "secret"})


class CloseCode(IntEnum):
    BAD_REQUEST = 4000
    RATE_LIMITED = 4002
    PEER_GONE = 4003
    IDLE = 4004
    REPLACED = 4005
    SLOW_PEER = 4006
    AUTH_FAILED = 4007
    NOT_ALLOWED = 4010
    SHUTDOWN = 1001


class Role(Enum):
    NEW = "new"
    CONTROL = "control"
    CLIENT = "client"
    RELAY = "relay"


class LinkState(Enum):
    INTRODUCED = "introduced"
    PENDING = "pending"
    RELAYING = "relaying"
    CLOSED = "closed"


@dataclass(eq=False)
class Peer:
    id: int
    ip: str
    origin: str
    opened: float
    role: Role = Role.NEW
    address: str | None = None
    link: Link | None = None


@dataclass(eq=False)
class Link:
    id: str
    address: str
    client: Peer
    control: Peer
    created: float
    ticket: str
    state: LinkState = LinkState.INTRODUCED
    host_end: Peer | None = None
    last_activity: float = 0.0
    relaying_since: float | None = None
    from_host: int = 0
    from_client: int = 0
    bucket: DebtBucket | None = None
    usage_tier: int = -1
    usage_throttled: bool = False
    usage_sent: float = -1e9
    closed_at: float | None = None
    close_reason: str = ""
    #: an upgrade request already showed this link's ticket (one exemption per link)
    dialback_claimed: bool = False


# -- actions the shell carries out -----------------------------------------------------------


@dataclass(frozen=True)
class Send:
    peer: int
    message: dict[str, Any]


@dataclass(frozen=True)
class Close:
    peer: int
    code: int
    reason: str


@dataclass(frozen=True)
class Splice:
    link: Link


Action = Send | Close | Splice


@dataclass
class Counters:
    links_total: int = 0
    links_relayed: int = 0
    bytes_from_host: int = 0
    bytes_from_client: int = 0
    registrations_total: int = 0
    rejections: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1


class RelayCore:
    """Registrations, links and limits for one relay process.

    The directory of registered hosts, their register pins, per-IP windows and hourly quotas
    live in ``state`` (a ``MemoryState``: the same store a cluster of in-process nodes shares);
    sockets and links, which only this process can hold, live here."""

    def __init__(
        self, config: RelayConfig, start: float, wall_ms: int, state: MemoryState | None = None
    ) -> None:
        self.config = config
        self.started = start
        self._wall_offset_ms = wall_ms - start * 1000
        self.state = MemoryState() if state is None else state
        self.peers: dict[int, Peer] = {}
        self.links: dict[str, Link] = {}
        self.recently_closed: deque[dict[str, Any]] = deque(maxlen=32)
        self.counters = Counters()
        #: dial-backs asked of registered hosts and not yet accepted, by the host's IP
        self._owed: dict[str, int] = {}

    # -- state --------------------------------------------------------------------------------
    @property
    def quotas(self) -> dict[str, HourlyQuota]:
        """Host address → its hourly allowance (kept in ``state``)."""
        return self.state.quotas

    def registered(self) -> dict[str, Peer]:
        """Address → the control socket holding it, for every host registered here."""
        return self.state.held()

    def holder(self, address: str) -> Peer | None:
        """The control socket holding ``address`` here, if any."""
        held: Peer | None = self.state.holder(address)
        return held

    def pin(self, address: str, now: float) -> Pin | None:
        return self.state.pin_at(address, now)

    # -- dial-backs owed ----------------------------------------------------------------------
    def dialbacks_owed(self, ip: str) -> int:
        """Dial-backs the relay asked of hosts registered from ``ip`` that have not arrived:
        the shell admits that many upgrades from ``ip`` past its anonymous per-IP share."""
        return self._owed.get(ip, 0)

    def dialback_credential(self, link_id: str, ticket: str) -> bool:
        """A dial-back's upgrade request names its link and the ticket sent only to the host;
        true once per link (a second upgrade with the same ticket is an ordinary one)."""
        link = self.links.get(link_id)
        if (
            link is None
            or link.state is not LinkState.PENDING
            or link.dialback_claimed
            or not secrets.compare_digest(ticket.encode(), link.ticket.encode())
        ):
            return False
        link.dialback_claimed = True
        return True

    def _owe(self, link: Link, delta: int) -> None:
        ip = link.control.ip
        left = self._owed.get(ip, 0) + delta
        if left > 0:
            self._owed[ip] = left
        else:
            self._owed.pop(ip, None)

    # -- time ---------------------------------------------------------------------------------
    def wall_ms(self, now: float) -> int:
        """Wall-clock milliseconds for ``now`` (the register ts check needs real time)."""
        return int(self._wall_offset_ms + now * 1000)

    # -- sockets ------------------------------------------------------------------------------
    def open(self, peer_id: int, ip: str, origin: str, now: float) -> Peer:
        peer = Peer(peer_id, ip, origin, now)
        self.peers[peer_id] = peer
        return peer

    def _close(self, peer: Peer, code: CloseCode, reason: str) -> Close:
        self.counters.reject(code.name.lower())
        return Close(peer.id, int(code), reason)

    def text(self, peer_id: int, data: str, now: float) -> list[Action]:
        """A text frame before the splice: one control message."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return []
        if len(data.encode()) > MAX_CONTROL:
            return [self._close(peer, CloseCode.BAD_REQUEST, "control frame over 4096 bytes")]
        try:
            message = json.loads(data)
        except ValueError:
            return [self._close(peer, CloseCode.BAD_REQUEST, "control frame is not JSON")]
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return [self._close(peer, CloseCode.BAD_REQUEST, "control frame has no type")]
        if _FORBIDDEN_FIELDS & message.keys():
            return [
                self._close(
                    peer, CloseCode.BAD_REQUEST, "the relay never takes pairing codes or secrets"
                )
            ]
        handler = {
            "register": self._register,
            "resolve": self._resolve,
            "relay": self._relay,
            "accept": self._accept,
            "getUsage": self._get_usage,
        }.get(message["type"])
        if handler is None:
            return [
                self._close(
                    peer, CloseCode.BAD_REQUEST, f"unknown message type {message['type'][:40]!r}"
                )
            ]
        return handler(peer, message, now)

    def binary(self, peer_id: int) -> list[Action]:
        """A binary frame before the splice is a protocol violation."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return []
        return [self._close(peer, CloseCode.BAD_REQUEST, "binary frame before relaying")]

    def closed(self, peer_id: int, now: float) -> list[Action]:
        """A socket went away; tear down what depended on it."""
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return []
        actions: list[Action] = []
        if peer.role is Role.CONTROL and peer.address is not None:
            self.state.release(peer.address, peer, now + PIN_MEMORY_SEC)
            for waiting in [
                lk
                for lk in self.links.values()
                if lk.control is peer and lk.state is not LinkState.RELAYING
            ]:
                actions += self._end_link(waiting, now, "host went away", survivor=waiting.client)
        link = peer.link
        if link is not None and link.state is not LinkState.CLOSED:
            if peer is link.client:
                other = link.host_end if link.state is LinkState.RELAYING else None
                actions += self._end_link(link, now, "client went away", survivor=other)
            elif peer is link.host_end:
                actions += self._end_link(link, now, "host end went away", survivor=link.client)
        return actions

    def _end_link(self, link: Link, now: float, reason: str, survivor: Peer | None) -> list[Action]:
        if link.state is LinkState.PENDING:
            self._owe(link, -1)
        link.state = LinkState.CLOSED
        link.closed_at = now
        link.close_reason = reason
        self.links.pop(link.id, None)
        self.recently_closed.append(self._link_info(link, now))
        if survivor is not None and survivor.id in self.peers:
            return [self._close(survivor, CloseCode.PEER_GONE, reason)]
        return []

    # -- limits -------------------------------------------------------------------------------
    def _ip_allowed(self, peer: Peer, now: float) -> bool:
        limit = self.config.ip_rate_per_min
        return limit <= 0 or self.state.hit_ip_at(peer.ip, limit, now)

    # -- register -----------------------------------------------------------------------------
    def _register(self, peer: Peer, msg: dict[str, Any], now: float) -> list[Action]:
        if peer.role not in (Role.NEW, Role.CONTROL):
            return [self._close(peer, CloseCode.BAD_REQUEST, f"register from a {peer.role.value}")]
        if not self._ip_allowed(peer, now):
            return [self._close(peer, CloseCode.RATE_LIMITED, "rate limited")]
        address = msg.get("address")
        if not isinstance(address, str) or not 1 <= len(address) <= 128:
            return [self._close(peer, CloseCode.BAD_REQUEST, "address must be 1-128 characters")]
        problem = self._check_auth(address, msg.get("auth"), peer.origin, now)
        if problem is not None:
            return [self._close(peer, CloseCode.AUTH_FAILED, problem)]
        key = msg["auth"]["pub"]
        if self.config.allowlist_active and key not in self.config.allowed_register_keys:
            return [self._close(peer, CloseCode.NOT_ALLOWED, "register key is not allowed")]
        ts = msg["auth"]["ts"]
        claim = self.state.claim_at(address, key, ts, now, PIN_MEMORY_SEC)
        if claim is not Claim.OK:
            self.counters.reject(claim.value)
            return [Send(peer.id, {"type": "error", "error": claim.value})]
        actions: list[Action] = []
        old = self.holder(address)
        if old is not None and old is not peer:
            old.role, old.address = Role.NEW, None
            actions.append(self._close(old, CloseCode.REPLACED, "replaced by a newer register"))
            for link in [
                lk
                for lk in self.links.values()
                if lk.control is old and lk.state is not LinkState.RELAYING
            ]:
                if link.state is LinkState.PENDING:
                    self._owe(link, -1)
                link.control = peer
                if link.state is LinkState.PENDING:
                    self._owe(link, +1)
        if peer.role is Role.CONTROL and peer.address not in (None, address):
            self.state.release(peer.address or "", peer, now + PIN_MEMORY_SEC)
        self.state.hold(address, peer)
        peer.role, peer.address = Role.CONTROL, address
        self.counters.registrations_total += 1
        actions.append(Send(peer.id, {"type": "registered", "address": address}))
        return actions

    def _check_auth(self, address: str, auth: object, origin: str, now: float) -> str | None:
        """None if the register auth is good, else why not (the close reason for 4007)."""
        if not isinstance(auth, dict):
            return "register needs a signed auth"
        if auth.get("alg") != "ed25519":
            return "auth alg must be ed25519"
        pub, ts, nonce, sig = (auth.get(k) for k in ("pub", "ts", "nonce", "sig"))
        if not (isinstance(pub, str) and isinstance(nonce, str) and isinstance(sig, str)):
            return "auth fields have the wrong types"
        if not isinstance(ts, int) or isinstance(ts, bool):
            return "auth ts must be an integer (ms)"
        if abs(self.wall_ms(now) - ts) > MAX_SKEW_MS:
            return "auth ts is more than 5 minutes off"
        if not 1 <= len(nonce) <= 88:
            return "auth nonce must be 1-88 characters"
        try:
            pub_raw = from_b64u(pub, 32, "auth pub")
            sig_raw = from_b64u(sig, 64, "auth sig")
        except LinkProtocolError as exc:
            return str(exc)
        if address != address_for_register_key(pub_raw):
            return "address is not the hash of the register key"
        message = register_signing_message(address, ts, nonce, origin)
        try:
            Ed25519PublicKey.from_public_bytes(pub_raw).verify(sig_raw, message)
        except (InvalidSignature, ValueError):
            return "bad register signature (wrong key, or signed for another origin)"
        return None

    # -- introduction -------------------------------------------------------------------------
    def _resolve(self, peer: Peer, msg: dict[str, Any], now: float) -> list[Action]:
        if peer.role is not Role.NEW:
            return [self._close(peer, CloseCode.BAD_REQUEST, f"resolve from a {peer.role.value}")]
        if not self._ip_allowed(peer, now):
            return [self._close(peer, CloseCode.RATE_LIMITED, "rate limited")]
        address = msg.get("address")
        if not isinstance(address, str) or not 1 <= len(address) <= 128:
            return [self._close(peer, CloseCode.BAD_REQUEST, "address must be 1-128 characters")]
        control = self.holder(address)
        if control is None:
            self.counters.reject("unknown_address")
            return [Send(peer.id, {"type": "error", "error": "unknown_address"})]
        waiting = [
            lk
            for lk in self.links.values()
            if lk.control is control and lk.state is not LinkState.RELAYING
        ]
        mine = sum(1 for lk in waiting if lk.client.ip == peer.ip)
        if mine >= self.config.max_pending_per_ip:
            return [
                self._close(
                    peer, CloseCode.RATE_LIMITED, "too many clients from this IP waiting for host"
                )
            ]
        actions: list[Action] = []
        if len(waiting) >= self.config.max_pending_per_host:
            victim = self._crowding(waiting)
            if victim is None:
                return [
                    self._close(peer, CloseCode.RATE_LIMITED, "too many clients waiting for host")
                ]
            self.counters.reject("evicted_waiting")
            actions += self._end_link(
                victim, now, "evicted: too many clients waiting", survivor=None
            )
            actions.append(
                Close(
                    victim.client.id,
                    int(CloseCode.RATE_LIMITED),
                    "too many clients waiting for host",
                )
            )
        link = Link(
            str(uuid.uuid4()),
            address,
            peer,
            control,
            now,
            b64u(secrets.token_bytes(18)),
            last_activity=now,
        )
        self.links[link.id] = link
        peer.role, peer.address, peer.link = Role.CLIENT, address, link
        self.counters.links_total += 1
        return [
            *actions,
            Send(peer.id, {"type": "found", "linkId": link.id}),
            Send(control.id, {"type": "arrived", "linkId": link.id, "address": address}),
        ]

    @staticmethod
    def _crowding(waiting: list[Link]) -> Link | None:
        """The oldest waiting link of the IP holding the most of a full waiting room, if that
        IP holds more than one: the crowd makes room, a lone client is never pushed out."""
        per_ip: dict[str, list[Link]] = {}
        for link in waiting:
            per_ip.setdefault(link.client.ip, []).append(link)
        crowd = max(per_ip.values(), key=len)
        if len(crowd) < 2:
            return None
        return min(crowd, key=lambda lk: lk.created)

    def _relay(self, peer: Peer, msg: dict[str, Any], now: float) -> list[Action]:
        link_id = msg.get("linkId")
        link = self.links.get(link_id) if isinstance(link_id, str) else None
        if (
            peer.role is not Role.CLIENT
            or link is None
            or link.client is not peer
            or link.state is not LinkState.INTRODUCED
        ):
            return [self._close(peer, CloseCode.BAD_REQUEST, "relay is only for the own link")]
        if link.control.id not in self.peers or link.control.role is not Role.CONTROL:
            return self._end_link(link, now, "host is not connected", survivor=peer)
        link.state = LinkState.PENDING
        self._owe(link, +1)
        link.last_activity = now
        return [Send(link.control.id, {"type": "relay", "linkId": link.id, "ticket": link.ticket})]

    def _accept(self, peer: Peer, msg: dict[str, Any], now: float) -> list[Action]:
        if peer.role is not Role.NEW:
            return [self._close(peer, CloseCode.BAD_REQUEST, f"accept from a {peer.role.value}")]
        link_id = msg.get("linkId")
        link = self.links.get(link_id) if isinstance(link_id, str) else None
        if link is None:
            self.counters.reject("unknown_link")
            return [Send(peer.id, {"type": "error", "error": "unknown_link"})]
        if link.state is not LinkState.PENDING:
            return [self._close(peer, CloseCode.BAD_REQUEST, "link is not waiting for its host")]
        ticket = msg.get("ticket")
        if not (self.config.legacy_accept and ticket is None) and not (
            isinstance(ticket, str) and secrets.compare_digest(ticket, link.ticket)
        ):
            return [
                self._close(
                    peer,
                    CloseCode.AUTH_FAILED,
                    "accept is not from the registered host (bad ticket)",
                )
            ]
        peer.role, peer.address, peer.link = Role.RELAY, link.address, link
        self._owe(link, -1)
        link.host_end = peer
        link.state = LinkState.RELAYING
        link.relaying_since = now
        link.last_activity = now
        if self.config.max_bps > 0:
            link.bucket = DebtBucket(self.config.max_bps, 2 * self.config.max_bps, now)
        self.counters.links_relayed += 1
        return [
            Send(link.client.id, {"type": "relaying", "linkId": link.id}),
            Send(peer.id, {"type": "relaying", "linkId": link.id}),
            Splice(link),
        ]

    # -- usage --------------------------------------------------------------------------------
    def _get_usage(self, peer: Peer, msg: dict[str, Any], now: float) -> list[Action]:
        if peer.role is not Role.CONTROL:
            return [self._close(peer, CloseCode.BAD_REQUEST, "getUsage is for registered hosts")]
        return [Send(peer.id, self._usage(peer.address or "", now))]

    def _usage(self, address: str, now: float) -> dict[str, Any]:
        quota = self.quotas.get(address) if self.config.hourly_bytes > 0 else None
        entries: list[dict[str, Any]] = []
        for link in self.links.values():
            if link.address != address or link.state is not LinkState.RELAYING:
                continue
            if self.config.hourly_bytes <= 0:
                entries.append({"linkId": link.id, "unlimited": True})
            else:
                used = quota.fraction_used(now) if quota is not None else 0.0
                throttled = quota.throttled if quota is not None else False
                entries.append({"linkId": link.id, "used": round(used, 4), "throttled": throttled})
        return {"type": "usage", "connections": entries}

    # -- the splice ---------------------------------------------------------------------------
    def relayed(self, link: Link, from_host: bool, size: int, now: float) -> list[Action]:
        """Account one forwarded frame; may push a ``usage`` update to the host."""
        if from_host:
            link.from_host += size
            self.counters.bytes_from_host += size
        else:
            link.from_client += size
            self.counters.bytes_from_client += size
        if link.bucket is not None:
            link.bucket.charge(size, now)
        link.last_activity = max(link.last_activity, now)
        if self.config.hourly_bytes <= 0:
            return []
        quota = self.quotas.get(link.address)
        if quota is None:
            quota = HourlyQuota(self.config.hourly_bytes, max(1, self.config.trickle_bps), now)
            self.quotas[link.address] = quota
        quota.charge(size, now)
        used = quota.fraction_used(now)
        tier = sum(1 for t in USAGE_TIERS if used >= t) - 1
        if (tier != link.usage_tier or quota.throttled != link.usage_throttled) and (
            now - link.usage_sent >= 1.0
        ):
            link.usage_tier, link.usage_throttled, link.usage_sent = tier, quota.throttled, now
            if link.control.id in self.peers and link.control.role is Role.CONTROL:
                return [Send(link.control.id, self._usage(link.address, now))]
        return []

    def wait(self, link: Link, now: float) -> float:
        """Seconds the sender must pause before the next frame of this link."""
        delay = link.bucket.wait(now) if link.bucket is not None else 0.0
        quota = self.quotas.get(link.address) if self.config.hourly_bytes > 0 else None
        if quota is not None:
            delay = max(delay, quota.wait(now))
        if delay > 0:
            link.last_activity = max(link.last_activity, now + delay)  # a held frame is activity
        return delay

    def sweep(self, now: float) -> list[Action]:
        """Periodic housekeeping: idle links, silent new sockets, forgotten pins and windows."""
        actions: list[Action] = []
        idle = self.config.idle_sec
        for link in list(self.links.values()):
            limit = (
                idle if link.state is LinkState.RELAYING else min(idle, self.config.handshake_sec)
            )
            if idle > 0 and now - link.last_activity > limit:
                ends = [link.client, link.host_end] if link.host_end else [link.client]
                self._end_link(link, now, "idle", survivor=None)
                actions += [
                    self._close(p, CloseCode.IDLE, "idle") for p in ends if p.id in self.peers
                ]
        for peer in list(self.peers.values()):
            if peer.role is Role.NEW and now - peer.opened > self.config.handshake_sec:
                peer.opened = now + 1e9  # close once
                actions.append(self._close(peer, CloseCode.IDLE, "no register or resolve"))
        self.state.sweep_at(now)
        for address, quota in list(self.quotas.items()):
            if now - quota.last_used > 3600 and not any(
                lk.address == address for lk in self.links.values()
            ):
                del self.quotas[address]
        return actions

    # -- reports ------------------------------------------------------------------------------
    def _link_info(self, link: Link, now: float) -> dict[str, Any]:
        info: dict[str, Any] = {
            "linkId": link.id,
            "state": link.state.value,
            "ageSec": round(now - link.created, 3),
            "bytesFromHost": link.from_host,
            "bytesFromClient": link.from_client,
        }
        if link.closed_at is not None:
            info["closeReason"] = link.close_reason
        return info

    def stats(self, now: float, admin: bool) -> dict[str, Any]:
        """Counts for everyone; link ids and per-link detail only for an admin."""
        live = list(self.links.values())
        out: dict[str, Any] = {
            "uptimeSec": round(now - self.started, 3),
            "addressRegistrations": len(self.registered()),
            "links": {
                "live": len(live),
                "relaying": sum(1 for lk in live if lk.state is LinkState.RELAYING),
                "total": self.counters.links_total,
                "totalRelayed": self.counters.links_relayed,
            },
            "bytesRelayed": {
                "fromHost": self.counters.bytes_from_host,
                "fromClient": self.counters.bytes_from_client,
            },
        }
        if admin:
            out["liveLinks"] = [self._link_info(lk, now) for lk in live]
            out["recentlyClosed"] = list(self.recently_closed)
        return out
