"""``ClusterState`` over Redis (redis-py's asyncio client): standalone, TLS, Cluster, Sentinel.

Every key holds one thing and every atomic step touches one key (a Lua script where a read
decides a write), so the same code runs on a Redis Cluster, where multi-key scripts would
cross slots. Each call is bounded by ``op_timeout``; any failure becomes ``StateUnavailable``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ConstantBackoff
from redis.exceptions import RedisError

from .state import Claim, NodeInfo, QuotaSnapshot, StateUnavailable, wall_ms

T = TypeVar("T")

PREFIX = "keywire:link:"
#: connections to Redis per node: a burst of registers queues for one instead of opening
#: hundreds (each check is one round trip, so a few dozen keep Redis busy)
MAX_CONNECTIONS = 32
HEARTBEAT_CONNECTIONS = 4
#: a heartbeat call's bound: a healthy Redis answers in milliseconds, and a hung one (or a
#: master Sentinel is about to replace) must show on ``/health`` within a beat or two, not
#: after the full ``op_timeout`` a register's check may wait out under load
HEARTBEAT_TIMEOUT = 1.5
#: how long the live nodes a heartbeat read stand in for their node keys in ``locate``: a
#: node's heartbeat reads them every second, so one lookup per introduction is enough
LIVE_NODES_FRESH_SEC = 2.0

#: KEYS[1] pin; ARGV key, ts, ttl ms. Strictly newer ts of the same key wins (replay refused).
_CLAIM = """
local cur = redis.call('HMGET', KEYS[1], 'key', 'ts')
if cur[1] then
  if cur[1] ~= ARGV[1] then return 'address_pinned' end
  if tonumber(ARGV[2]) <= tonumber(cur[2]) then return 'register_stale' end
end
redis.call('HSET', KEYS[1], 'key', ARGV[1], 'ts', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'ok'
"""

#: KEYS[1] the IP's window for this minute; ARGV ttl s. The count after this hit.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def connect_redis(url: str) -> Any:
    """A client for ``redis://``, ``rediss://``, ``unix://`` (``?cluster=1`` for a Redis
    Cluster) or ``redis+sentinel://H1:P1,H2:P2/SERVICE`` (the master Sentinel names)."""
    parts = urlsplit(url)
    retry = Retry(ConstantBackoff(0.05), 1)
    common: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}
    if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
        hosts = []
        for item in (parts.netloc.rsplit("@", 1)[-1]).split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host or item, int(port) if host else 26379))
        service = parts.path.strip("/") or "mymaster"
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, ssl=parts.scheme.startswith("rediss"), **common
        )
        return sentinel.master_for(
            service, password=parts.password, username=parts.username, retry=retry
        )
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"--cluster needs a redis://, rediss://, unix:// or redis+sentinel:// URL, got {url!r}"
        )
    if parse_qs(parts.query).get("cluster", ["0"])[0] in ("1", "true", "yes"):
        plain = parts._replace(query="").geturl()
        return RedisCluster.from_url(plain, retry=retry, **common)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=2.0, retry=retry, **common
    )
    return Redis(connection_pool=pool)


class RedisState:
    """Cluster state in Redis; keys under ``keywire:link:``."""

    def __init__(
        self, client: Any, op_timeout: float = 3.0, heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    ) -> None:
        self.redis = client
        self.op_timeout = op_timeout
        self.heartbeat_timeout = min(heartbeat_timeout, op_timeout)
        self._claim = client.register_script(_CLAIM)
        self._hit = client.register_script(_HIT)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS - HEARTBEAT_CONNECTIONS)
        #: node id → URL as the last ``live_nodes`` read them, and when (loop time)
        self._live: dict[str, str] = {}
        self._live_at = -1e9

    @classmethod
    def from_url(cls, url: str) -> RedisState:
        return cls(connect_redis(url))

    async def _do(self, call: Awaitable[T], heartbeat: bool = False) -> T:
        """Run one call within ``op_timeout``. Checks queue for a connection first (a burst
        of registers is load, not an outage); the heartbeat keeps connections of its own so
        a burst cannot delay it past the node's TTL, and waits ``heartbeat_timeout`` at most."""
        if heartbeat:
            return await self._timed(call, self.heartbeat_timeout)
        async with self._slots:
            return await self._timed(call, self.op_timeout)

    async def _timed(self, call: Awaitable[T], timeout: float) -> T:
        try:
            async with asyncio.timeout(timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"Redis unreachable: {exc or type(exc).__name__}") from None

    async def hit_ip(self, ip: str, limit: int) -> bool:
        key = f"{PREFIX}ip:{ip}:{wall_ms() // 60_000}"
        count = await self._do(self._hit(keys=[key], args=[120]))
        return int(count) <= limit

    async def claim_register(self, address: str, key: str, ts: int, ttl_sec: float) -> Claim:
        raw = await self._do(
            self._claim(keys=[f"{PREFIX}pin:{address}"], args=[key, ts, int(ttl_sec * 1000)])
        )
        return Claim(raw.decode() if isinstance(raw, bytes) else str(raw))

    async def announce(self, node: NodeInfo, ttl_sec: float) -> bool:
        key = f"{PREFIX}node:{node.id}"
        ms = int(ttl_sec * 1000)
        renewed = await self._do(self.redis.set(key, node.url, px=ms, xx=True), heartbeat=True)
        if renewed:
            return True
        await self._do(self.redis.set(key, node.url, px=ms), heartbeat=True)
        await self._do(self.redis.sadd(f"{PREFIX}nodes", node.id), heartbeat=True)
        return False

    async def retire(self, node: NodeInfo) -> None:
        self._live.pop(node.id, None)
        await self._do(self.redis.delete(f"{PREFIX}node:{node.id}"), heartbeat=True)
        await self._do(self.redis.srem(f"{PREFIX}nodes", node.id), heartbeat=True)

    async def publish(self, entries: dict[str, int], node_id: str, ttl_sec: float) -> None:
        ms = int(ttl_sec * 1000)
        items = list(entries.items())
        for start in range(0, len(items), 500):
            pipe = self.redis.pipeline(transaction=False)
            for address, since in items[start : start + 500]:
                pipe.hset(f"{PREFIX}dir:{address}", node_id, since)
                pipe.pexpire(f"{PREFIX}dir:{address}", ms)
            await self._do(pipe.execute())

    async def withdraw(self, address: str, node_id: str) -> None:
        await self._do(self.redis.hdel(f"{PREFIX}dir:{address}", node_id))

    async def locate(self, address: str) -> NodeInfo | None:
        """One HGETALL: a node the last heartbeat saw live (within ``LIVE_NODES_FRESH_SEC``)
        is taken as live; only a node it did not see costs a GET of its key. The saved GET
        was half of a spliced introduction's Redis work (docs/performance.md)."""
        held: dict[bytes, bytes] = await self._do(self.redis.hgetall(f"{PREFIX}dir:{address}"))
        fresh = asyncio.get_running_loop().time() - self._live_at < LIVE_NODES_FRESH_SEC
        for raw_id, _since in sorted(held.items(), key=lambda kv: -int(kv[1])):
            node_id = raw_id.decode()
            known = self._live.get(node_id) if fresh else None
            if known is not None:
                return NodeInfo(node_id, known)
            url = await self._do(self.redis.get(f"{PREFIX}node:{node_id}"))
            if url is not None:
                return NodeInfo(node_id, url.decode())
        return None

    async def live_nodes(self) -> list[NodeInfo]:
        members = await self._do(self.redis.smembers(f"{PREFIX}nodes"), heartbeat=True)
        ids = sorted(m.decode() for m in members)
        pipe = self.redis.pipeline(transaction=False)
        for node_id in ids:
            pipe.get(f"{PREFIX}node:{node_id}")
        urls = await self._do(pipe.execute(), heartbeat=True) if ids else []
        live: list[NodeInfo] = []
        for node_id, url in zip(ids, urls, strict=True):
            if url is None:
                await self._do(self.redis.srem(f"{PREFIX}nodes", node_id), heartbeat=True)
            else:
                live.append(NodeInfo(node_id, url.decode()))
        self._live = {node.id: node.url for node in live}
        self._live_at = asyncio.get_running_loop().time()
        return live

    async def node_secret(self, mine: bytes) -> bytes:
        key = f"{PREFIX}secret"
        await self._do(self.redis.set(key, mine, nx=True), heartbeat=True)
        stored = await self._do(self.redis.get(key), heartbeat=True)
        return bytes(stored) if stored is not None else mine

    async def save_quota(self, address: str, quota: QuotaSnapshot, ttl_sec: float) -> None:
        value = json.dumps([quota.tokens, quota.throttled, quota.wall_ms])
        await self._do(self.redis.set(f"{PREFIX}quota:{address}", value, px=int(ttl_sec * 1000)))

    async def load_quota(self, address: str) -> QuotaSnapshot | None:
        raw = await self._do(self.redis.get(f"{PREFIX}quota:{address}"))
        if raw is None:
            return None
        try:
            tokens, throttled, at = json.loads(raw)
            return QuotaSnapshot(float(tokens), bool(throttled), int(at))
        except (ValueError, TypeError):
            return None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.redis.aclose(), 2.0)
        except (RedisError, OSError, TimeoutError):
            pass
