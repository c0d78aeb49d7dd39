"""Store streams over a real three-master Redis Cluster on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from keywire.options import Options
from keywire.store import LossyStore, Role, StoreParams, StoreStream
from keywire.store.backends.rediscluster import RedisClusterStore, parse_cluster_url

from .conftest import random_bytes
from .redisclusterproc import RedisClusterProcesses
from .roundtrip import echo_through_server
from .test_stream_memory import MB8, SECRET, exchange, send_all

FAST = dict(rto_min=0.05, rto_initial=0.2)


def test_url_grammar() -> None:
    assert parse_cluster_url("redis-cluster://a:1,b:2") == [("a", 1), ("b", 2)]
    for bad in ("redis://a:1", "redis-cluster://a", "redis-cluster://"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)


@pytest.mark.parametrize("wakeups", ["pubsub", "poll"])
async def test_8mb_each_way_over_redis_cluster_with_loss(
    cluster: RedisClusterProcesses, wakeups: str
) -> None:
    stores = [
        RedisClusterStore(cluster.url, max_value=65536 + 64, ttl=60, signed=True, wakeups=wakeups)
        for _ in range(2)
    ]
    a = LossyStore(stores[0], put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=41)
    b = LossyStore(stores[1], put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=42)
    try:
        started = time.monotonic()
        await exchange(a, b, StoreParams(window=16, value_size=65536, **FAST), MB8, 120)
        elapsed = time.monotonic() - started
        assert a.dropped > 20 and b.dropped > 20
        keys = await stores[0].stored_keys()
        assert keys > 100  # spread over the masters, all with a TTL
        print(f"8 MiB each way, redis cluster, {wakeups}: {elapsed:.1f} s, polls {stores[0].polls}")
    finally:
        await a.close()
        await b.close()


async def test_storage_returns_to_zero_within_the_ttl(cluster: RedisClusterProcesses) -> None:
    ttl = 5.0
    store = RedisClusterStore(cluster.url, ttl=ttl, signed=True)
    try:
        await exchange(store, store, StoreParams(window=16, **FAST), 2_000_000, 60)
        assert await store.stored_keys() > 0
        finished = time.monotonic()
        async with asyncio.timeout(10):
            while await store.stored_keys() > 0:
                await asyncio.sleep(0.2)
        assert time.monotonic() - finished < ttl + 1
    finally:
        await store.close()


async def complete_despite_a_master_kill(
    cluster: RedisClusterProcesses, stores: list[RedisClusterStore], seed: int
) -> None:
    """4 MB from ``stores[0]`` to ``stores[1]`` while the first master is SIGKILLed after 1 MB
    and restarted empty 2 s later: the stream must complete byte-exact (the lost frames that
    were not acknowledged are put again)."""
    params = StoreParams(window=8, **FAST)
    a = StoreStream.open(stores[0], SECRET, Role.LISTENER, params=params)
    b = StoreStream.open(stores[1], SECRET, Role.DIALER, params=params)
    data = random_bytes(4_000_000, seed)
    try:
        receiving = asyncio.ensure_future(b.read_all())
        sending = asyncio.ensure_future(send_all(a, data, chunk=50_000))
        async with asyncio.timeout(30):
            while b.core.bytes_read < 1_000_000:
                await asyncio.sleep(0.05)
        cluster.kill(cluster.ports[0])
        await asyncio.sleep(2)
        assert not receiving.done()
        await asyncio.to_thread(cluster.restart, cluster.ports[0])
        async with asyncio.timeout(90):
            await sending
            assert await receiving == data
    finally:
        await a.abort()
        await b.abort()
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_master_killed_and_restarted_mid_stream(cluster: RedisClusterProcesses) -> None:
    """One of three masters is killed (SIGKILL) after 1 MB and comes back 2 s later, empty:
    requests to its slots fail meanwhile and are retried; the stream completes byte-exact."""
    stores = [RedisClusterStore(cluster.url, ttl=60, signed=True) for _ in range(2)]
    await complete_despite_a_master_kill(cluster, stores, 12)


async def test_redis_cluster_address_serves_and_dials(cluster: RedisClusterProcesses) -> None:
    """``redis-cluster://HOST:PORT~stream`` (one seed node; the client finds the others)."""
    spec = f"redis-cluster://127.0.0.1:{cluster.ports[1]}~stream"
    address = await echo_through_server(spec, Options(timeout=10), random_bytes(300_000, 13))
    assert address.startswith(spec + ":")
