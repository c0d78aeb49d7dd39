"""The write-once put script against a real redis-server: stores once with a TTL, takes a
retransmission, refuses other bytes, refuses oversized values, and publishes only on a store."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from keywire.store.backends.redis_writeonce import WRITE_ONCE_SCRIPT, PutOutcome, put_once
from keywire.store.capability import WriteCap, parse_signed_put
from keywire.store.schedule import Role

from .conftest import RedisProcess


async def test_write_once_with_ttl(redis_server: RedisProcess) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    script = client.register_script(WRITE_ONCE_SCRIPT)
    pubsub = client.pubsub()
    try:
        async with asyncio.timeout(20):
            await pubsub.subscribe(b"w")
            await pubsub.get_message(timeout=1)  # the subscribe confirmation
            cap = WriteCap.derive(bytes(range(32)), Role.LISTENER)
            address, body = cap.signed_put(0, b"frame zero")
            key = b"kw:v:" + address.hex().encode()
            assert await put_once(script, key, body, 30, 1000, b"w") is PutOutcome.STORED
            assert await pubsub.get_message(timeout=2) is not None
            assert await put_once(script, key, body, 30, 1000, b"w") is PutOutcome.ALREADY
            forged = bytes(64) + b"frame zero"
            assert await put_once(script, key, forged, 30, 1000, b"w") is PutOutcome.CONFLICT
            assert await pubsub.get_message(timeout=0.3) is None  # no wake-up for those
            stored = await client.get(key)
            assert parse_signed_put(address, stored) == b"frame zero"  # the reader's check
            assert 0 < await client.pttl(key) <= 30_000
            with pytest.raises(ResponseError, match="TOOLARGE"):
                await put_once(script, b"kw:v:big", b"x" * 1001, 30, 1000, b"w")
            assert await put_once(script, b"kw:v:short", b"v", 0.2, 1000, b"w") is PutOutcome.STORED
            await asyncio.sleep(0.4)
            assert await client.exists(b"kw:v:short") == 0  # expired
    finally:
        await pubsub.aclose()
        await client.aclose()
