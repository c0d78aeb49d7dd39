"""A NATS JetStream key-value backend: store streams on a replicated, distributed store.

* **Put** is a create-only write (``KV create``: JetStream's expected-last-subject-sequence
  0), so a box is **write-once**: a second put of the same bytes (a retransmission) counts as
  done; a put of other bytes at a taken address is dropped like a lost put (counted in
  ``conflicts``) — the stream reads the frame back, rejects what it cannot authenticate and,
  after ``bad_frame_tries``, fails; nobody can replace a frame that is there.
* **Expiry** is the bucket's TTL (JetStream ``max_age``): every frame lives ``ttl`` seconds
  from its put, acknowledged or not, so storage per stream is bounded by what is written in
  one TTL.
* **Get** reads the key (``get_ahead``, a stream's read-ahead: not first, see ``FirstRead``);
  on a miss it subscribes (core NATS, no JetStream consumer) to the
  key's subject ``$KV.<bucket>.<key>`` — the subject a KV watch follows — reads again (the
  server handles the subscription first, so a put in between is not missed) and waits for a
  message there. A message is only a wake-up: the value is read from the bucket, since a
  refused create is still delivered to core subscribers. A put whose publish passed just
  before the subscription may not be stored yet at that read (no wake-up comes then), so a
  waiting get reads once more after ``SETTLE_RECHECK``, and as a safety net every ``RECHECK``
  seconds.
* **Durability**: ``?replicas=N`` (1–5) makes the bucket replicated over a JetStream
  cluster; the client reconnects to any server of the URL list, so a stream survives the
  loss of one of three servers.

``NatsStore("nats://127.0.0.1:4222,127.0.0.1:4223/keywire?replicas=3")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from ...errors import Code
from .backend import (
    FirstRead,
    StoreError,
    StoreFull,
    StoreRefused,
    ValueTooLarge,
    WaitingStore,
    check_address,
)

DEFAULT_TTL = 3600.0
DEFAULT_MAX_VALUE = 1 << 16
DEFAULT_BUCKET = "keywire"
#: a waiting get reads the key again this often, in case a wake-up was missed (reconnect)
RECHECK = 2.0
#: how soon a get reads again after a wake-up that found nothing yet (then SETTLE_RECHECK)
WOKEN_RECHECK = 0.002
#: the first re-read of a get that found nothing and heard no wake-up (then every RECHECK)
SETTLE_RECHECK = 0.02
#: bound of one NATS request (a put, a get, a flush)
REQUEST_TIMEOUT = 5.0
#: room for a message's headers above ``max_value`` in the bucket's size limit
HEADER_ROOM = 1024
_BUCKET = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)


def parse_nats_url(url: str) -> tuple[list[str], str, int]:
    """(server URLs, bucket, replicas) from ``nats://H:P[,H:P…]/BUCKET[?replicas=N]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls"):
        raise ValueError(f"NATS URL must be nats://HOST:PORT[,HOST:PORT…]/BUCKET, got {url!r}")
    hosts = [h for h in parts.netloc.split(",") if h]
    if not hosts:
        raise ValueError(f"NATS URL {url!r} names no server")
    servers = [
        f"{parts.scheme}://{h if ':' in h.rpartition('@')[2] else h + ':4222'}" for h in hosts
    ]
    bucket = parts.path.strip("/") or DEFAULT_BUCKET
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"NATS bucket {bucket!r}: 1-64 of A-Z a-z 0-9 _ -")
    query = parse_qs(parts.query)
    replicas = int(query.get("replicas", ["1"])[-1])
    if not 1 <= replicas <= 5:
        raise ValueError(f"NATS replicas must be 1..5, got {replicas}")
    return servers, bucket, replicas


class NatsStore(WaitingStore):
    """A JetStream KV bucket as a write-once, expiring store (see the module text)."""

    #: NATS reads ahead as it gets: subscribing first measured no gain beyond noise here
    #: (stream ÷ raw 0.20 → 0.23), and with it the 8 MiB lossy NATS exchange once made no
    #: progress for 280 s under CI load (docs/status.md "Known gaps": the plain path stalled
    #: once too, earlier, on a doubly loaded machine), so NATS keeps the path of its passing runs
    subscribe_first = False

    def __init__(
        self,
        url: str,
        *,
        max_value: int = DEFAULT_MAX_VALUE,
        ttl: float = DEFAULT_TTL,
        signed: bool = True,
    ) -> None:
        self.servers, self.bucket, self.replicas = parse_nats_url(url)
        self.description = (
            f"nats {','.join(s.rpartition('@')[2] for s in self.servers)}/{self.bucket}"
        )
        self.max_value = max_value
        self.ttl = ttl
        self.signed = signed
        self.conflicts = 0
        self._first_read = FirstRead()
        self._nc: Client | None = None
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    async def _bucket(self) -> tuple[Client, KeyValue]:
        """Connect and open (or create) the bucket once; later calls reuse them."""
        if self._nc is not None and self._kv is not None:
            return self._nc, self._kv
        async with self._lock:
            if self._nc is None:
                self._nc = await nats.connect(
                    servers=self.servers,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    error_cb=_ignore,
                    disconnected_cb=_noop,
                )
            if self._kv is None:
                js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)
                try:
                    kv = await js.key_value(self.bucket)
                    await self._check_existing(js)
                    self._kv = kv
                except nats.js.errors.BucketNotFoundError:
                    self._kv = await js.create_key_value(
                        KeyValueConfig(
                            bucket=self.bucket,
                            history=1,
                            ttl=self.ttl,
                            # the limit counts headers too (the create's expected sequence)
                            max_value_size=self.max_value + HEADER_ROOM,
                            storage=StorageType.FILE,
                            replicas=self.replicas,
                        )
                    )
            return self._nc, self._kv

    async def _check_existing(self, js: JetStreamContext) -> None:
        """An existing bucket's limits win: refuse one too small for our values (every put
        would fail) and adopt its TTL."""
        config = (await js.stream_info(f"KV_{self.bucket}")).config
        limit = config.max_msg_size
        if limit is not None and 0 < limit < self.max_value + HEADER_ROOM:
            raise StoreRefused(
                f"{self.description}: the bucket takes values of at most {limit - HEADER_ROOM} "
                f"bytes, the stream needs {self.max_value} (use another bucket, or delete it)",
                Code.TOO_LARGE,
            )
        if config.max_age:
            self.ttl = float(config.max_age)

    def _error(self, what: str, exc: BaseException) -> StoreError:
        text = f"{self.description}: {what}: {type(exc).__name__}: {exc}"
        if isinstance(exc, nats.js.errors.APIError) and exc.err_code in (10047, 10028):
            return StoreFull(text)  # insufficient resources / storage limit
        return StoreError(text)

    async def put(self, address: bytes, value: bytes) -> None:
        check_address(address)
        if len(value) > self.max_value:
            raise ValueTooLarge(len(value), self.max_value)
        key = address.hex()
        try:
            _, kv = await self._bucket()
            try:
                await kv.create(key, value)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            existing = await self._read(address)
        except StoreError:
            raise
        except _ERRORS as exc:
            raise self._error("put", exc) from None
        if existing != value:
            self.conflicts += 1  # write-once: what is there stays; the stream treats it as lost

    async def _read(self, address: bytes) -> bytes | None:
        try:
            _, kv = await self._bucket()
            entry = await kv.get(address.hex())
        except nats.js.errors.KeyNotFoundError:
            return None
        except _ERRORS as exc:
            raise self._error("get", exc) from None
        return bytes(entry.value) if entry.value is not None else None

    async def _wait(
        self, address: bytes, wait: float, guess: FirstRead | None = None
    ) -> bytes | None:
        """Subscribe to the key's subject, then read until a put wakes us or ``wait`` ends."""
        nc, _ = await self._bucket()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        woken = asyncio.Event()

        async def wake(_msg: Any) -> None:
            woken.set()

        try:
            sub = await nc.subscribe(f"$KV.{self.bucket}.{address.hex()}", cb=wake)
        except _ERRORS as exc:
            raise self._error("subscribe", exc) from None
        try:
            # no flush: the server handles our SUB before the read that follows on the same
            # connection (and a cancelled flush breaks nats-py's PONG bookkeeping)
            pause = SETTLE_RECHECK
            while True:
                value = await self._read(address)
                if guess is not None:
                    guess.found(value is not None)
                    guess = None
                remaining = deadline - loop.time()
                if value is not None or remaining <= 0:
                    return value
                woken.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, pause)):
                        await woken.wait()
                # a put's publish reaches subscribers as JetStream stores it, so a wake-up can
                # come before the bucket holds the value, and a put whose publish passed just
                # before our SUB may still be unstored at our first read (no wake-up then):
                # read again soon after a wake-up, and once early on, then every RECHECK
                if woken.is_set():
                    pause = WOKEN_RECHECK
                else:
                    pause = SETTLE_RECHECK if pause < SETTLE_RECHECK else RECHECK
        finally:
            with contextlib.suppress(*_ERRORS):
                await sub.unsubscribe()

    async def probe(self) -> None:
        """Connect and open the bucket: a server without JetStream fails here."""
        try:
            await self._bucket()
        except _ERRORS as exc:
            raise self._error("open bucket", exc) from None

    async def stored_bytes(self) -> int:
        """Bytes the bucket's stream holds now (for storage measurements)."""
        nc, _ = await self._bucket()
        info = await nc.jetstream(timeout=REQUEST_TIMEOUT).stream_info(f"KV_{self.bucket}")
        return int(info.state.bytes)

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = None
        self._kv = None


async def _ignore(_exc: Exception) -> None:
    """nats-py reports connection errors through a callback; the stream sees them as
    failed operations and retries, so the callback only keeps them off stderr."""


async def _noop() -> None:
    pass
