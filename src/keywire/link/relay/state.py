"""A relay's state: the directory, register pins, per-IP windows, hourly quotas, the node key.

``ClusterState`` is the interface a relay node needs from shared state. ``MemoryState``
implements it in one process, and it is also where the single-process relay's core keeps its
own state: the core calls its synchronous ``*_at`` methods (time passed in, sans-IO), the
async ``ClusterState`` methods run the same steps on the monotonic clock. ``RedisState``
(``cluster.redis_state``) implements ``ClusterState`` over Redis for nodes in separate
processes or machines. Every method is a single atomic step on the store, so two nodes racing
cannot both win a register or both under-count an IP.

A cluster node's core keeps its own ``MemoryState`` (the hosts it holds, its local window);
the shared state is a second instance, checked before the core sees a register.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from .bucket import HourlyQuota


class Claim(Enum):
    """The outcome of a register's compare-and-set on its address's pin."""

    OK = "ok"
    PINNED = "address_pinned"
    STALE = "register_stale"


@dataclass(frozen=True)
class NodeInfo:
    """A live node: its id and the WebSocket URL other nodes reach it at."""

    id: str
    url: str


@dataclass(frozen=True)
class QuotaSnapshot:
    """A host's hourly allowance as one node last saw it (wall-clock ms)."""

    tokens: float
    throttled: bool
    wall_ms: int


@dataclass(slots=True, eq=False)
class Pin:
    """An address's register key and last ts. ``holder`` is the control socket holding the
    address here; without one the pin is kept until ``until``, so a captured register stays
    refused for the whole skew window after its host left. Slots: one per idle host."""

    key: str
    ts: int
    holder: Any = None
    until: float = math.inf


class StateUnavailable(Exception):
    """The shared state cannot be reached; what needs it must be refused, not guessed."""


class ClusterState(Protocol):
    """The operations a relay node performs on cluster-wide state."""

    async def hit_ip(self, ip: str, limit: int) -> bool:
        """Count one register/resolve of ``ip`` in this wall-clock minute; False past ``limit``."""
        ...

    async def claim_register(self, address: str, key: str, ts: int, ttl_sec: float) -> Claim:
        """Atomically: the pin is absent, or has ``key`` and an older ts → pin (key, ts)."""
        ...

    async def announce(self, node: NodeInfo, ttl_sec: float) -> bool:
        """Mark ``node`` alive for ``ttl_sec``; False if its record was gone (state lost)."""
        ...

    async def retire(self, node: NodeInfo) -> None:
        """The node is leaving: it is dead at once for every other node."""
        ...

    async def publish(self, entries: dict[str, int], node_id: str, ttl_sec: float) -> None:
        """``node_id`` holds these addresses (address → register wall ms); renews their TTL."""
        ...

    async def withdraw(self, address: str, node_id: str) -> None:
        """``node_id`` no longer holds ``address``."""
        ...

    async def locate(self, address: str) -> NodeInfo | None:
        """The live node that most recently registered ``address``, if any."""
        ...

    async def live_nodes(self) -> list[NodeInfo]:
        """Every node whose heartbeat has not expired."""
        ...

    async def node_secret(self, mine: bytes) -> bytes:
        """The secret nodes authenticate each other with: the first one stored wins."""
        ...

    async def save_quota(self, address: str, quota: QuotaSnapshot, ttl_sec: float) -> None: ...

    async def load_quota(self, address: str) -> QuotaSnapshot | None: ...

    async def close(self) -> None: ...


def wall_ms() -> int:
    return int(time.time() * 1000)


class MemoryState:
    """``ClusterState`` in one process, and the single-process relay's own state.

    Expiry times are on the caller's clock (``now``; the async methods use the monotonic
    clock, as the relay's shell does)."""

    def __init__(self) -> None:
        #: address → its pin (and holder, for the addresses registered here)
        self.pins: dict[str, Pin] = {}
        #: host address → its hourly allowance, charged by the links through this relay
        self.quotas: dict[str, HourlyQuota] = {}
        self._windows: dict[str, tuple[float, int]] = {}
        self._windows_swept = 0.0
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}
        self._dir: dict[str, tuple[dict[str, int], float]] = {}
        self._saved: dict[str, tuple[QuotaSnapshot, float]] = {}
        self._secret: bytes | None = None

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    # -- synchronous steps (the sans-IO core calls these with its own clock) -------------------
    def hit_ip_at(self, ip: str, limit: int, now: float) -> bool:
        """Count one register/resolve of ``ip`` in its 60 s window (opened by its first hit)."""
        start, count = self._windows.get(ip, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        count += 1
        self._windows[ip] = (start, count)
        return count <= limit

    def pin_at(self, address: str, now: float) -> Pin | None:
        """The address's pin, unless it has been forgotten."""
        pin = self.pins.get(address)
        return pin if pin is not None and now < pin.until else None

    def claim_at(self, address: str, key: str, ts: int, now: float, ttl_sec: float) -> Claim:
        """Compare-and-set: no live pin, or one with ``key`` and an older ts → pin (key, ts).
        A held pin keeps its holder; a new one is kept ``ttl_sec`` unless someone holds it."""
        pin = self.pin_at(address, now)
        if pin is None:
            self.pins[address] = Pin(key, ts, None, now + ttl_sec)
            return Claim.OK
        if pin.key != key:
            return Claim.PINNED
        if ts <= pin.ts:
            return Claim.STALE
        pin.ts = ts
        if pin.holder is None:
            pin.until = now + ttl_sec
        return Claim.OK

    def hold(self, address: str, holder: Any) -> None:
        """``holder`` now holds the (claimed) address: its pin lives as long as the hold."""
        pin = self.pins[address]
        pin.holder, pin.until = holder, math.inf

    def holder(self, address: str) -> Any:
        pin = self.pins.get(address)
        return pin.holder if pin is not None else None

    def release(self, address: str, holder: Any, until: float) -> bool:
        """``holder`` let go of ``address``; its pin is kept until ``until``. False if it
        was not the holder (a newer register took the address meanwhile)."""
        pin = self.pins.get(address)
        if pin is None or pin.holder is not holder:
            return False
        pin.holder, pin.until = None, until
        return True

    def held(self) -> dict[str, Any]:
        """Address → holder, for every address held here."""
        return {a: p.holder for a, p in self.pins.items() if p.holder is not None}

    def sweep_at(self, now: float) -> None:
        """Forget expired pins and per-IP windows (quotas are swept by their user)."""
        for address in [a for a, p in self.pins.items() if now >= p.until]:
            del self.pins[address]
        for ip in [ip for ip, (start, _) in self._windows.items() if now - start >= 60]:
            del self._windows[ip]
        self._windows_swept = now

    # -- ClusterState -------------------------------------------------------------------------
    async def hit_ip(self, ip: str, limit: int) -> bool:
        now = self._now()
        if now - self._windows_swept >= 60:
            self.sweep_at(now)
        return self.hit_ip_at(ip, limit, now)

    async def claim_register(self, address: str, key: str, ts: int, ttl_sec: float) -> Claim:
        return self.claim_at(address, key, ts, self._now(), ttl_sec)

    async def announce(self, node: NodeInfo, ttl_sec: float) -> bool:
        now = self._now()
        old = self._nodes.get(node.id)
        self._nodes[node.id] = (node, now + ttl_sec)
        return old is not None and old[1] > now

    async def retire(self, node: NodeInfo) -> None:
        self._nodes.pop(node.id, None)

    async def publish(self, entries: dict[str, int], node_id: str, ttl_sec: float) -> None:
        until = self._now() + ttl_sec
        for address, since in entries.items():
            held, _ = self._dir.get(address, ({}, 0.0))
            held[node_id] = since
            self._dir[address] = (held, until)

    async def withdraw(self, address: str, node_id: str) -> None:
        held, _ = self._dir.get(address, ({}, 0.0))
        held.pop(node_id, None)

    async def locate(self, address: str) -> NodeInfo | None:
        now = self._now()
        held, until = self._dir.get(address, ({}, 0.0))
        if until <= now:
            return None
        for node_id, _since in sorted(held.items(), key=lambda kv: -kv[1]):
            entry = self._nodes.get(node_id)
            if entry is not None and entry[1] > now:
                return entry[0]
        return None

    async def live_nodes(self) -> list[NodeInfo]:
        now = self._now()
        return [node for node, until in self._nodes.values() if until > now]

    async def node_secret(self, mine: bytes) -> bytes:
        if self._secret is None:
            self._secret = mine
        return self._secret

    async def save_quota(self, address: str, quota: QuotaSnapshot, ttl_sec: float) -> None:
        self._saved[address] = (quota, self._now() + ttl_sec)

    async def load_quota(self, address: str) -> QuotaSnapshot | None:
        entry = self._saved.get(address)
        return entry[0] if entry is not None and entry[1] > self._now() else None

    async def close(self) -> None:
        return None


def new_node_id() -> str:
    return secrets.token_hex(6)
