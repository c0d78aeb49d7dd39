"""keywire's Redis module (``KEYWIRE.PUT``) in real redis-servers: it refuses unsigned, forged
and misplaced puts from any client, keeps every address write-once, and carries 8 MiB streams
with loss on one Redis and on a three-master Redis Cluster; with the ACL that grants only
``KEYWIRE.PUT`` for writes, a hostile client of the same Redis cannot pre-empt a frame."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from keywire.options import Options
from keywire.store import LossyStore, RedisStore, Role, StoreParams
from keywire.store.backends import StoreFull, StoreRefused
from keywire.store.backends.redis_writeonce import MODULE_COMMAND
from keywire.store.backends.rediscluster import RedisClusterStore
from keywire.store.capability import WriteCap, parse_signed_put
from keywire.store.redismodule import BuildError, build

from .conftest import RedisProcess, random_bytes
from .redisclusterproc import RedisClusterProcesses
from .roundtrip import echo_through_server
from .test_capability_stores import every_address, hostile_bodies
from .test_rediscluster import complete_despite_a_master_kill
from .test_stream_memory import MB8, SECRET, exchange

FAST: dict[str, float] = dict(rto_min=0.05, rto_initial=0.2)
CAP = WriteCap.derive(SECRET, Role.LISTENER)
#: what a keywire client needs, and nothing that writes except KEYWIRE.PUT (docs/store.md)
ACL_RULES = [
    "on", ">kw-secret", "resetkeys", "~kw:*", "resetchannels", "&kw:*", "-@all",
    "+keywire.put", "+get", "+ping", "+hello", "+command|info",
    "+subscribe", "+unsubscribe", "+ssubscribe", "+sunsubscribe",
]  # fmt: skip


def key(address: bytes) -> bytes:
    return b"kw:v:" + address.hex().encode()


async def commandstats(client: aioredis.Redis) -> dict[str, int]:
    """Calls per command since the server started."""
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_build_is_cached_and_failures_are_clear(keywire_module: Path, tmp_path: Path) -> None:
    assert keywire_module.exists()
    assert build(keywire_module.parent) == keywire_module  # the same source: no rebuild
    done = subprocess.run(
        [sys.executable, "-m", "keywire.store.redismodule", "build", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src")),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    built = Path(done.stdout.strip())
    assert built.parent == tmp_path and built.name == keywire_module.name
    with pytest.raises(BuildError, match="failed"):
        build(tmp_path / "other", compiler="false")
    assert not list((tmp_path / "other").iterdir())  # no half-written module left behind


async def test_raw_puts_without_a_valid_signature_are_refused(module_redis: RedisProcess) -> None:
    client = aioredis.Redis.from_url(module_redis.url)
    try:
        async with asyncio.timeout(20):
            address = CAP.address(3)
            for body in hostile_bodies(3):
                with pytest.raises(ResponseError, match=r"^KWSIG"):
                    await client.execute_command(
                        MODULE_COMMAND, key(address), body, 60_000, 1 << 20
                    )
            with pytest.raises(ResponseError, match=r"^KWSIG .*64-byte signature"):
                await client.execute_command(MODULE_COMMAND, key(address), b"", 60_000, 100)
            assert await client.exists(key(address)) == 0  # nothing was stored
            # a genuine body under another frame's key: the signature names its address
            good = CAP.signed_put(3, b"frame three")[1]
            with pytest.raises(ResponseError, match=r"^KWSIG .*does not verify"):
                await client.execute_command(MODULE_COMMAND, key(CAP.address(4)), good, 60_000, 100)
            for bad_key in (b"kw:v:short", b"kw:{" + b"0" * 63 + b"}:v", b"kw:v:" + b"g" * 64):
                with pytest.raises(ResponseError, match=r"^KWADDR"):
                    await client.execute_command(MODULE_COMMAND, bad_key, good, 60_000, 100)
            with pytest.raises(ResponseError, match=r"^TOOLARGE 75"):
                await client.execute_command(MODULE_COMMAND, key(address), good, 60_000, 74)
            with pytest.raises(ResponseError, match="ttl_ms"):
                await client.execute_command(MODULE_COMMAND, key(address), good, 0, 100)
            with pytest.raises(ResponseError, match="wrong number of arguments"):
                await client.execute_command(MODULE_COMMAND, key(address), good)
            # the genuine put: once stored (and published), again fine, other bytes refused
            pubsub = client.pubsub()
            await pubsub.subscribe(b"kw:w:3")
            await pubsub.get_message(timeout=1)
            put = (MODULE_COMMAND, key(address), good, 30_000, 100, "PUBLISH", b"kw:w:3")
            assert await client.execute_command(*put) == 1
            assert (await pubsub.get_message(timeout=2) or {}).get("data") == b"1"
            assert await client.execute_command(*put) == 0
            other = CAP.signed_put(3, b"another")[1]  # validly signed, other bytes: write-once
            refused = (MODULE_COMMAND, key(address), other, 30_000, 100)
            assert await client.execute_command(*refused) == -1
            assert await pubsub.get_message(timeout=0.3) is None  # no wake-up for those
            await pubsub.aclose()
            assert parse_signed_put(address, await client.get(key(address))) == b"frame three"
            assert 0 < await client.pttl(key(address)) <= 30_000
            # the cluster's key form (the hash tag is the address) with a sharded publish
            tagged = b"kw:{" + CAP.address(5).hex().encode() + b"}:v"
            body5 = CAP.signed_put(5, b"five")[1]
            spub = (MODULE_COMMAND, tagged, body5, 30_000, 100, "SPUBLISH", b"kw:{x}:w")
            assert await client.execute_command(*spub) == 1
    finally:
        await client.aclose()


def test_redis_cli_put_is_refused(module_redis: RedisProcess) -> None:
    """The same check from ``redis-cli``, the operator's own tool."""
    address = CAP.address(9).hex()
    done = subprocess.run(
        ["redis-cli", "-p", str(module_redis.port), MODULE_COMMAND, f"kw:v:{address}",
         "x" * 100, "60000", "1000"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert "KWSIG the signature does not verify" in done.stdout + done.stderr


async def test_store_uses_the_module_and_probe_turns_signing_on(
    module_redis: RedisProcess, redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    raw = aioredis.Redis.from_url(module_redis.url)
    plain = RedisStore(module_redis.url)
    signed = RedisStore(module_redis.url, signed=True, server_check="module")
    script = RedisStore(module_redis.url, signed=True, server_check="script")
    missing = RedisStore(redis_server.url, signed=True, server_check="module")
    fallback = RedisStore(redis_server.url, signed=True)
    try:
        async with asyncio.timeout(20):
            await plain.probe()
            assert plain.signed and plain.module  # a Redis with the module takes signed puts
            await signed.put(*CAP.signed_put(0, b"zero"))
            await signed.put(*CAP.signed_put(0, b"zero"))
            await signed.put(*CAP.signed_put(0, b"other"))
            assert signed.conflicts == 1
            with pytest.raises(StoreRefused, match="KWSIG"):  # through keywire's own put
                await signed.put(CAP.address(1), hostile_bodies(1)[2])
            await script.put(*CAP.signed_put(2, b"two"))  # the Lua script, on request
            assert script.module is False
            calls = await commandstats(raw)
            # (a first EVALSHA is refused with NOSCRIPT; redis-py loads the script, sends it again)
            assert calls.get("keywire.put") == 4 and calls.get("evalsha", 0) >= 1
            # a Redis without the module: "module" refuses, "auto" warns once and uses the script
            with pytest.raises(StoreRefused, match="module is not loaded"):
                await missing.put(*CAP.signed_put(0, b"zero"))
            with caplog.at_level(logging.WARNING, logger="keywire.store"):
                await fallback.put(*CAP.signed_put(0, b"zero"))
                await fallback.put(*CAP.signed_put(1, b"one"))
            assert fallback.module is False
            warnings = [r for r in caplog.records if "module is not loaded" in r.getMessage()]
            assert len(warnings) == 1
            await fallback.probe()
            unsigned = RedisStore(redis_server.url)
            await unsigned.probe()
            assert not unsigned.signed  # no module: nothing changes
            await unsigned.close()
    finally:
        await asyncio.gather(
            raw.aclose(), plain.close(), signed.close(), script.close(), missing.close(),
            fallback.close(),
        )  # fmt: skip


async def test_8mb_each_way_over_redis_with_the_module_and_loss(module_redis: RedisProcess) -> None:
    stores = [RedisStore(module_redis.url, max_value=65536 + 64, ttl=60, signed=True)]
    stores.append(RedisStore(module_redis.url, max_value=65536 + 64, ttl=60, signed=True))
    a = LossyStore(stores[0], put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=51)
    b = LossyStore(stores[1], put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=52)
    raw = aioredis.Redis.from_url(module_redis.url)
    try:
        await exchange(a, b, StoreParams(window=16, value_size=65536, **FAST), MB8, 60)
        assert a.dropped > 20 and b.dropped > 20
        assert stores[0].module and stores[1].module
        calls = await commandstats(raw)
        assert calls.get("keywire.put", 0) > 2 * MB8 // 65536 and "evalsha" not in calls
    finally:
        await asyncio.gather(a.close(), b.close(), raw.aclose())


async def test_hostile_client_of_the_same_redis_cannot_preempt(module_redis: RedisProcess) -> None:
    """Every client, the streams' and the hostile one, logs in as the one ACL user that may
    write only through ``KEYWIRE.PUT``. The hostile client knows all 400 addresses of a 2 MB
    exchange and tries, before and during it, forged ``KEYWIRE.PUT``s (five kinds) and raw
    ``SET``/``DEL``/``EVAL``: all refused, and the stream is byte-exact with no rejection."""
    admin = aioredis.Redis.from_url(module_redis.url)
    await admin.execute_command("ACL", "SETUSER", "keywire", *ACL_RULES)
    url = f"redis://keywire:kw-secret@127.0.0.1:{module_redis.port}/0"
    hostile = aioredis.Redis.from_url(url)
    addresses = every_address()
    refused = accepted = denied = 0

    async def attack(rounds: int) -> None:
        nonlocal refused, accepted, denied
        for _ in range(rounds):
            for i, address in enumerate(addresses):
                for body in hostile_bodies(i % 200):
                    try:
                        await hostile.execute_command(
                            MODULE_COMMAND, key(address), body, 60_000, 1 << 20
                        )
                        accepted += 1
                    except ResponseError as exc:
                        assert str(exc).startswith("KWSIG"), exc
                        refused += 1
                raw_writes = (
                    hostile.set(key(address), b"x" * 100),
                    hostile.delete(key(address)),
                    hostile.eval("return redis.call('SET', KEYS[1], 'x')", 1, key(address)),
                )
                for write in raw_writes:
                    try:
                        await write
                        accepted += 1
                    except NoPermissionError:
                        denied += 1
            await asyncio.sleep(0)

    ra, rb = RedisStore(url, ttl=60), RedisStore(url, ttl=60)
    a = b = None
    try:
        async with asyncio.timeout(90):
            await attack(1)  # pre-empt: every address before the stream starts
            await asyncio.gather(ra.probe(), rb.probe())
            assert ra.signed and rb.signed  # the probe found the module
            a = LossyStore(ra, put_loss=0.3, delay=(0, 0.004), seed=5)
            b = LossyStore(rb, put_loss=0.3, delay=(0, 0.004), seed=6)
            attacking = asyncio.ensure_future(attack(2))  # and while it runs
            await exchange(a, b, StoreParams(window=8, **FAST), 2_000_000, 60)
            await attacking
        assert accepted == 0
        assert refused == 3 * len(addresses) * 5 and denied == 3 * len(addresses) * 3
        dialer_7 = WriteCap.derive(SECRET, Role.DIALER).address(7)
        stored = await admin.get(key(dialer_7))
        assert stored is not None and len(parse_signed_put(dialer_7, stored)) == 16384
    finally:
        await asyncio.gather(ra.close(), rb.close(), hostile.aclose(), admin.aclose())
        for lossy in (a, b):
            if lossy is not None:
                await lossy.close()


async def test_full_redis_refuses_the_module_put_as_full(module_redis: RedisProcess) -> None:
    """``KEYWIRE.PUT`` is ``deny-oom``: at ``maxmemory`` with ``noeviction`` it is refused
    before it runs, and the store says ``StoreFull`` as for any put."""
    raw = aioredis.Redis.from_url(module_redis.url)
    store = RedisStore(module_redis.url, signed=True, server_check="module")
    try:
        async with asyncio.timeout(20):
            await store.put(*CAP.signed_put(0, b"fits"))
            await raw.config_set("maxmemory-policy", "noeviction")
            used = (await raw.info("memory"))["used_memory"]
            await raw.config_set("maxmemory", str(used + 200_000))
            with pytest.raises(StoreFull, match="is full"):
                for i in range(1, 100):
                    await store.put(*CAP.signed_put(i, bytes(50_000)))
    finally:
        await asyncio.gather(store.close(), raw.aclose())


async def test_redis_address_with_the_module_serves_and_dials(module_redis: RedisProcess) -> None:
    """``redis://…~stream`` (``keywire.Server`` and ``dial``): both probes find the module and
    sign, so the session records and every frame go through ``KEYWIRE.PUT``; everything stored
    is a valid signed put."""
    raw = aioredis.Redis.from_url(module_redis.url)
    try:
        spec = f"{module_redis.url}~stream"
        await echo_through_server(spec, Options(timeout=10), random_bytes(300_000, 14))
        keys = [k async for k in raw.scan_iter(match=b"kw:v:*")]
        assert len(keys) > 20
        for k in keys:
            parse_signed_put(bytes.fromhex(k[-64:].decode()), await raw.get(k))
        calls = await commandstats(raw)
        assert calls.get("keywire.put", 0) >= len(keys) and "evalsha" not in calls
    finally:
        await raw.aclose()


@pytest.fixture
def module_cluster(tmp_path: Path, keywire_module: Path) -> Iterator[RedisClusterProcesses]:
    nodes = RedisClusterProcesses(tmp_path, modules=(keywire_module,))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


async def test_8mb_each_way_over_a_redis_cluster_with_the_module(
    module_cluster: RedisClusterProcesses,
) -> None:
    stores = [
        RedisClusterStore(
            module_cluster.url, max_value=65536 + 64, ttl=60, signed=True, server_check="module"
        )
        for _ in range(2)
    ]
    a = LossyStore(stores[0], put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=53)
    b = LossyStore(stores[1], put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=54)
    raw = RedisCluster(host="127.0.0.1", port=module_cluster.ports[0])
    try:
        async with asyncio.timeout(20):  # a forged put is refused on whichever master owns it
            for index in range(6):
                with pytest.raises(ResponseError, match=r"^KWSIG"):
                    await raw.execute_command(
                        MODULE_COMMAND, RedisClusterStore._key(CAP.address(index)),
                        hostile_bodies(index)[2], 60_000, 1 << 20,
                    )  # fmt: skip
        await exchange(a, b, StoreParams(window=16, value_size=65536, **FAST), MB8, 120)
        assert a.dropped > 20 and b.dropped > 20
        assert stores[0].module and stores[1].module
        per_master = await raw.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        puts = [
            int(stats.get("cmdstat_keywire.put", {}).get("calls", 0))
            for stats in per_master.values()
        ]
        assert len(puts) == 3 and all(p > 50 for p in puts), puts  # every master checked
    finally:
        await asyncio.gather(a.close(), b.close(), raw.aclose())


async def test_cluster_without_the_module_falls_back_or_refuses(tmp_path: Path) -> None:
    nodes = RedisClusterProcesses(tmp_path)
    nodes.start()
    strict = RedisClusterStore(nodes.url, signed=True, server_check="module")
    auto = RedisClusterStore(nodes.url, signed=True)
    try:
        async with asyncio.timeout(20):
            with pytest.raises(StoreRefused, match="not loaded on"):
                await strict.put(*CAP.signed_put(0, b"zero"))
            await auto.put(*CAP.signed_put(0, b"zero"))
            assert auto.module is False
            assert parse_signed_put(CAP.address(0), await auto.get(CAP.address(0), 0) or b"")
    finally:
        await asyncio.gather(strict.close(), auto.close())
        nodes.stop()


async def test_a_master_with_the_module_killed_and_restarted_mid_stream(
    module_cluster: RedisClusterProcesses,
) -> None:
    """One of three masters is SIGKILLed after 1 MB and restarted empty (loading the module
    again) 2 s later: the stream completes byte-exact, every put checked by the module."""
    stores = [
        RedisClusterStore(module_cluster.url, ttl=60, signed=True, server_check="module")
        for _ in range(2)
    ]
    await complete_despite_a_master_kill(module_cluster, stores, 15)
    assert stores[0].module and stores[1].module
