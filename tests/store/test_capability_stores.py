"""Write capabilities at real stores: a map server started with ``signed`` refuses unsigned,
forged and replayed puts and keeps every address write-once, so a hostile writer without the
secret — even one that knows every address — can neither overwrite, forge nor pre-empt a
frame; signed streams run byte-exact over the map server, Redis and NATS with loss."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from nacl.signing import SigningKey

from keywire.errors import StreamError
from keywire.options import Options
from keywire.store import HttpStore, LossyStore, MapServer, Role, StoreParams, StoreStream
from keywire.store.backends import RedisStore, StoreRefused
from keywire.store.backends.nats import NatsStore
from keywire.store.capability import WriteCap, parse_signed_put
from keywire.store.schedule import KeySchedule

from .conftest import RedisProcess, random_bytes
from .natsproc import NatsProcess
from .roundtrip import echo_through_server
from .test_stream_memory import SECRET, exchange

FAST = dict(rto_min=0.05, rto_initial=0.2)
MB2 = 2_000_000
#: frames a 2 MB transfer at value size 16384 uses in each direction, with room to spare
FRAMES = 200


def hostile_bodies(index: int) -> list[bytes]:
    """What a writer without the secret can make for frame ``index`` of the listener."""
    other = WriteCap.derive(bytes(32), Role.LISTENER)  # another secret's capability
    stranger = SigningKey(bytes(range(32)))
    legit = WriteCap.derive(SECRET, Role.LISTENER)
    return [
        os.urandom(16384),  # not signed at all
        bytes(64) + os.urandom(16384),  # a zero "signature"
        other.signed_put(index, os.urandom(16384))[1],  # signed by another stream's key
        stranger.sign(os.urandom(100)).signature + os.urandom(100),  # by an ordinary key
        legit.signed_put(index + 1, b"replayed")[1],  # a genuine body from another address
    ]


def every_address() -> list[bytes]:
    """Both directions' frame addresses (a hostile writer that somehow knows them all)."""
    return [WriteCap.derive(SECRET, role).address(i) for role in Role for i in range(FRAMES)]


@pytest.fixture
async def signed_map() -> MapServer:
    server = await MapServer(signed=True).start()
    yield server  # type: ignore[misc]
    await server.close()


async def test_signed_map_server_refuses_unsigned_forged_and_replayed_puts(
    signed_map: MapServer,
) -> None:
    raw = HttpStore(signed_map.url)  # sends bodies as they are
    cap = WriteCap.derive(SECRET, Role.LISTENER)
    try:
        async with asyncio.timeout(20):
            await raw.probe()
            assert raw.signed  # the server said so in GET /v1
            address = cap.address(3)
            for body in hostile_bodies(3):
                with pytest.raises(StoreRefused, match="403"):
                    await raw.put(address, body)
            assert await raw.get(address, 0) is None  # nothing was stored
            # the schedule's unsigned hash address is no key at all
            unsigned_address = KeySchedule.derive(SECRET, Role.LISTENER).write.frame_id(3)
            with pytest.raises(StoreRefused, match=r"not a valid Ed25519|does not verify"):
                await raw.put(unsigned_address, bytes(65))
            good = cap.signed_put(3, b"frame three")
            await raw.put(*good)
            await raw.put(*good)  # the same bytes again: fine
            await raw.put(good[0], cap.signed_put(3, b"another")[1])  # 409: write-once
            assert raw.conflicts == 1
            assert parse_signed_put(address, await raw.get(address, 0) or b"") == b"frame three"
    finally:
        await raw.close()


async def test_hostile_writer_cannot_overwrite_forge_or_preempt_on_the_map_server(
    signed_map: MapServer,
) -> None:
    hostile = HttpStore(signed_map.url)
    addresses = every_address()
    refused = accepted = 0

    async def attack(rounds: int) -> None:
        nonlocal refused, accepted
        for _ in range(rounds):
            for i, address in enumerate(addresses):
                for body in hostile_bodies(i % FRAMES)[:3]:
                    try:
                        await hostile.put(address, body)
                        accepted += 1
                    except StoreRefused:
                        refused += 1
            await asyncio.sleep(0)

    a = LossyStore(HttpStore(signed_map.url, signed=True), put_loss=0.3, delay=(0, 0.004), seed=1)
    b = LossyStore(HttpStore(signed_map.url, signed=True), put_loss=0.3, delay=(0, 0.004), seed=2)
    try:
        await attack(1)  # pre-empt: every address before the stream starts
        attacking = asyncio.ensure_future(attack(3))  # overwrite: while it runs
        await exchange(a, b, StoreParams(window=8, **FAST), MB2, 60)  # no rejections either
        await attacking
        assert accepted == 0 and refused == 4 * len(addresses) * 3
    finally:
        await asyncio.gather(a.close(), b.close(), hostile.close())


async def test_signed_stream_over_redis_is_write_once(redis_server: RedisProcess) -> None:
    a = LossyStore(
        RedisStore(redis_server.url, ttl=60, signed=True), put_loss=0.3, delay=(0, 0.004), seed=3
    )
    b = LossyStore(
        RedisStore(redis_server.url, ttl=60, signed=True), put_loss=0.3, delay=(0, 0.004), seed=4
    )
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await exchange(a, b, StoreParams(window=8, **FAST), MB2, 60)
        address = WriteCap.derive(SECRET, Role.DIALER).address(5)
        stored = await client.get(b"kw:v:" + address.hex().encode())
        assert stored is not None and len(parse_signed_put(address, stored)) == 16384
        assert 0 < await client.pttl(b"kw:v:" + address.hex().encode()) <= 60_000
        forger = RedisStore(redis_server.url, signed=True)  # through keywire's put: refused
        await forger.put(address, hostile_bodies(5)[2])
        assert forger.conflicts == 1
        assert await client.get(b"kw:v:" + address.hex().encode()) == stored
        await forger.close()
    finally:
        await asyncio.gather(a.close(), b.close(), client.aclose())


async def test_nats_preempted_frame_is_never_delivered(nats_server: NatsProcess) -> None:
    """NATS cannot check signatures: a writer with access to the bucket that knew a future
    address could take it first. The reader then refuses the value (signature, then AEAD)
    and the stream fails naming the frame — it never delivers a forged byte."""
    url = nats_server.url + "/hostile"
    hostile = NatsStore(url)
    listener_frame_3 = WriteCap.derive(SECRET, Role.LISTENER).address(3)
    await hostile.put(listener_frame_3, hostile_bodies(3)[2])
    a, b = NatsStore(url), NatsStore(url)
    params = StoreParams(window=2, bad_frame_tries=3, **FAST)
    x = StoreStream.open(a, SECRET, Role.LISTENER, params=params)
    y = StoreStream.open(b, SECRET, Role.DIALER, params=params)
    data = random_bytes(200_000, 9)
    try:
        writing = asyncio.ensure_future(x.write(data))
        with pytest.raises(StreamError, match=r"protocol-error \(6.*frame 3"):
            async with asyncio.timeout(60):
                got = b""
                while chunk := await y.read(1 << 20):
                    got += chunk
                    assert data.startswith(got)  # only genuine bytes, in order
        assert any(r.index == 3 for r in y.rejections), list(y.rejections)
        assert a.conflicts >= 1  # the writer's own put of frame 3 was refused: write-once
        writing.cancel()
    finally:
        await x.abort()
        await y.abort()
        await asyncio.gather(a.close(), b.close(), hostile.close())


async def test_dial_and_listen_through_a_signed_map_server(signed_map: MapServer) -> None:
    """The session rendezvous records are signed too, so ``keywire.Server``/``dial`` work
    against a ``--signed`` server (their probe sees ``"signed": true``); nothing unsigned
    is stored."""
    payload = random_bytes(300_000, 6)
    await echo_through_server(f"{signed_map.url}~stream", Options(timeout=10), payload)
    assert signed_map.table.entries  # records and frames were stored, all of them signed
    for address, (body, _) in signed_map.table.entries.items():
        parse_signed_put(address, body)


async def test_map_server_command_with_signed(tmp_path: Path) -> None:
    """``keywire map-server --signed`` (a real process) says so in ``GET /v1`` and refuses an
    unsigned put; a client's probe turns signing on."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    args = [sys.executable, "-m", "keywire", "map-server", "--port", "0", "--signed"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    store = None
    try:
        assert proc.stdout is not None
        url = (await asyncio.to_thread(proc.stdout.readline)).decode().strip()
        store = HttpStore(url)
        async with asyncio.timeout(10):
            await store.probe()
            assert store.signed
            cap = WriteCap.derive(SECRET, Role.DIALER)
            with pytest.raises(StoreRefused, match="403"):
                await store.put(cap.address(0), b"unsigned value" * 10)
            await store.put(*cap.signed_put(0, b"signed"))
            assert parse_signed_put(cap.address(0), await store.get(cap.address(0), 0) or b"")
    finally:
        if store is not None:
            await store.close()
        proc.terminate()
        proc.wait(10)
