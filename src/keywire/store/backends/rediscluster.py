"""A Redis Cluster backend: store streams on several Redis masters.

* **Keys** are ``kw:{<hex>}:v``: the hash tag is the address, so a key and its wake-up channel
  ``kw:{<hex>}:w`` share a slot (the put script touches one slot, and a sharded publish goes
  to the shard that holds the key). Addresses are pseudorandom, so a stream's frames spread
  over all masters — the store interface names addresses, not streams.
* **Put** is, when ``signed``, ``KEYWIRE.PUT`` if every master has keywire's module (it
  verifies the signature, then ``SET NX PX``, compare, ``SPUBLISH``), else the write-once
  script of ``redis_writeonce``; unsigned, ``SET PX``. The TTL applies either way.
* **Get**, ``wakeups="pubsub"`` (default): on a miss, a sharded subscription (``SSUBSCRIBE``)
  to the key's channel on the master that owns its slot — one pub/sub connection per master,
  shared by every waiting get — then a second read once Redis confirmed it, then a wait for
  the put script's ``SPUBLISH``, which carries the value (safety net: a read every 2 s).
  ``wakeups="poll"``: a miss is read again ``POLL_MIN`` growing to ``POLL_MAX`` seconds
  apart. docs/store.md has both measured.
* A master that dies fails the requests routed to it (``StoreError``, retried by the stream)
  until the cluster has a new master for its slots (a replica takes over) or it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .backend import StoreError, check_address
from .redis_writeonce import MODULE_COMMAND, PUBLISH_VALUE, WRITE_ONCE_SCRIPT
from .redisstore import DRIVER_INFO, RedisKeyValue, _Subscriber

_SET_SCRIPT = """
if string.len(ARGV[1]) > tonumber(ARGV[3]) then
  return redis.error_reply('TOOLARGE ' .. string.len(ARGV[1]))
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
#: the sharded publish of the value (the channel shares the key's slot)
_SPUBLISH_VALUE = PUBLISH_VALUE.replace("'PUBLISH'", "'SPUBLISH'")
_SET_PUBLISH_SCRIPT = _SET_SCRIPT.replace("return 1\n", _SPUBLISH_VALUE + "return 1\n", 1)
_ONCE_SPUBLISH_SCRIPT = WRITE_ONCE_SCRIPT.replace(PUBLISH_VALUE, _SPUBLISH_VALUE)
_ONCE_SILENT_SCRIPT = WRITE_ONCE_SCRIPT.replace("  " + PUBLISH_VALUE, "")
assert _SET_PUBLISH_SCRIPT != _SET_SCRIPT
assert _ONCE_SPUBLISH_SCRIPT != WRITE_ONCE_SCRIPT != _ONCE_SILENT_SCRIPT
assert "PUBLISH" not in _ONCE_SILENT_SCRIPT

DEFAULT_TTL = 3600.0
DEFAULT_MAX_VALUE = 1 << 16
#: first and largest interval between two reads of a waiting get
POLL_MIN, POLL_MAX = 0.005, 0.05


def parse_cluster_url(url: str) -> list[tuple[str, int]]:
    """Start nodes from ``redis-cluster://H:P[,H:P…]``."""
    parts = urlsplit(url)
    if parts.scheme != "redis-cluster" or not parts.netloc:
        raise ValueError(f"Redis Cluster URL must be redis-cluster://HOST:PORT[,…], got {url!r}")
    nodes = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Redis Cluster node {item!r} must be HOST:PORT")
        nodes.append((host, int(port)))
    return nodes


class RedisClusterStore(RedisKeyValue):
    """``RedisClusterStore("redis-cluster://127.0.0.1:7000,127.0.0.1:7001")``."""

    def __init__(
        self,
        url: str,
        *,
        max_value: int = DEFAULT_MAX_VALUE,
        ttl: float = DEFAULT_TTL,
        signed: bool = False,
        wakeups: str = "pubsub",
        server_check: str = "auto",
    ) -> None:
        if wakeups not in ("pubsub", "poll"):
            raise ValueError(f"wakeups must be 'pubsub' or 'poll', got {wakeups!r}")
        nodes = parse_cluster_url(url)
        self.wakeups = wakeups
        self.description = "redis cluster " + ",".join(f"{h}:{p}" for h, p in nodes)
        self.max_value = max_value
        self.ttl = ttl
        self.signed = signed
        self.conflicts = 0
        self.polls = 0
        self._client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            driver_info=DRIVER_INFO,
        )
        publish = wakeups == "pubsub"
        self._once_script = self._client.register_script(
            _ONCE_SPUBLISH_SCRIPT if publish else _ONCE_SILENT_SCRIPT
        )
        self._script = self._client.register_script(_SET_PUBLISH_SCRIPT if publish else _SET_SCRIPT)
        self._publish = "SPUBLISH" if publish else None
        self._init_checks(server_check)
        self._subscribers: dict[str, _Subscriber] = {}
        self._node_clients: list[aioredis.Redis] = []
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def _start(self) -> None:
        """Learn the slot map once before any command: redis-py replaces its node objects
        while it initialises, and commands started meanwhile can meet a closed connection."""
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                try:
                    await self._client.initialize()
                except (RedisError, OSError) as exc:
                    raise self._error(exc) from None
                self._ready = True

    async def _servers_without_module(self) -> list[str]:
        """Every master must have the module: a put goes to whichever owns its key's slot."""
        missing = []
        for node in self._client.get_primaries():  # one by one: redis-py's policies for
            reply = await self._client.execute_command(  # COMMAND would merge the replies
                "COMMAND INFO", MODULE_COMMAND, target_nodes=node
            )
            if not (reply and reply[0]):
                missing.append(node.name)
        if not missing:  # redis-py routes by the key positions in its cached COMMAND table
            await self._client.commands_parser.initialize()
        return missing

    @staticmethod
    def _key(address: bytes) -> bytes:
        return b"kw:{" + address.hex().encode() + b"}:v"

    @staticmethod
    def _channel(address: bytes) -> bytes:
        return b"kw:{" + address.hex().encode() + b"}:w"

    async def _subscriber_for(self, channel: bytes) -> _Subscriber:
        """The sharded subscriber of the master that owns ``channel``'s slot."""
        await self._start()
        try:
            node = self._client.get_node_from_key(channel.decode())
        except (RedisError, OSError) as exc:
            raise self._error(exc) from None
        if node is None:
            raise StoreError(f"{self.description}: no node serves {channel!r}")
        subscriber = self._subscribers.get(node.name)
        if subscriber is None:
            client = aioredis.Redis(
                host=node.host, port=int(node.port), socket_connect_timeout=2.0,
                retry=Retry(NoBackoff(), 0), driver_info=DRIVER_INFO,
            )  # fmt: skip
            self._node_clients.append(client)
            subscriber = self._subscribers[node.name] = _Subscriber(client, sharded=True)
        return subscriber

    async def get(self, address: bytes, wait: float) -> bytes | None:
        if self.wakeups == "poll":
            check_address(address)
            return await self._poll(address, wait)
        return await super().get(address, wait)

    async def _poll(self, address: bytes, wait: float) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        interval = POLL_MIN
        while True:
            value = await self._read(address)
            remaining = deadline - loop.time()
            if value is not None or remaining <= 0:
                return value
            self.polls += 1
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 2, POLL_MAX)

    async def stored_keys(self) -> int:
        """Keys held over all masters (for storage measurements)."""
        sizes = await self._client.dbsize(target_nodes=RedisCluster.PRIMARIES)
        return int(sum(sizes.values()) if isinstance(sizes, dict) else sizes)

    async def close(self) -> None:
        for subscriber in self._subscribers.values():
            await subscriber.close()
        for client in self._node_clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        self._subscribers.clear()
        self._node_clients.clear()
        with contextlib.suppress(Exception):
            await self._client.aclose()
