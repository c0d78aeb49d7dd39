"""A Redis backend: the shared store that lets any number of machines carry store streams.

* **Put** is one Lua script, so it is atomic: it refuses a value over ``max_value`` (Redis would
  take 512 MB), ``SET``s it with a TTL (``PX``), and ``PUBLISH``es the value (``=`` + value) on
  the address's channel, so a waiting get has it without reading again.
  A signed put is write-once: ``KEYWIRE.PUT`` when the server has keywire's module (it also
  verifies the signature; ``probe`` then turns signing on, as a ``--signed`` map server does),
  else ``redis_writeonce``'s script.
* **Get** reads the key; on a miss it subscribes to the key's channel, reads again (a put between
  the first read and the subscription is not missed), and waits for the publish or its timeout.
  One subscriber connection per backend carries every waiting get: no polling at all. A
  wake-up without the value (``1``, from keywire's module) makes the get read the key.
  ``get_ahead`` (a stream's reads, which run ahead of the puts) subscribes first and reads
  once; on one server, gets started together share one SUBSCRIBE and one MGET.
* **Memory policy** is the operator's: with ``maxmemory``, use ``volatile-ttl`` or
  ``volatile-lru`` (every stream key has a TTL); an evicted frame is a lost put to the stream,
  which retransmits what is unacknowledged, but a frame that was acknowledged and then evicted
  before the peer restarted from saved state is gone. Persistence (AOF/RDB) decides whether
  frames survive a Redis restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import (
    AuthenticationError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.utils import check_protocol_version

from ..tls import explain, verify_failure
from .backend import (
    FirstRead,
    StoreError,
    StoreFull,
    StoreRefused,
    ValueTooLarge,
    WaitingStore,
    check_address,
)
from .redis_writeonce import (
    MODULE_COMMAND,
    PUBLISH_VALUE,
    VALUE_MARK,
    WRITE_ONCE_SCRIPT,
    PutOutcome,
    check_server_check,
    module_put,
    module_refusal,
    put_once,
)

log = logging.getLogger("keywire.store")
#: stores already warned that they fall back to the script (once per store per process)
_WARNED: set[str] = set()

_PUT_SCRIPT = f"""
if string.len(ARGV[1]) > tonumber(ARGV[3]) then
  return redis.error_reply('TOOLARGE ' .. string.len(ARGV[1]))
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
{PUBLISH_VALUE}return 1
"""
#: given to every client: without it redis-py asks importlib.metadata for its own version on
#: every new connection (~3 ms of CPU each, a tenth of a short stream's time)
DRIVER_INFO = DriverInfo(lib_version=redis.__version__)

DEFAULT_TTL = 3600.0
#: a waiting get reads the key again this often, in case a publish was lost (one GET per
#: interval per waiting get: a safety net, not a polling loop)
RECHECK = 2.0
DEFAULT_MAX_VALUE = 1 << 16


async def _pass_push(response: Any) -> Any:
    """redis-py's default RESP3 pub/sub handler formats every message for a debug log
    (``str()`` of a 16 KiB value: ~90 µs each) even with the log off; this one does not."""
    return response


async def _close_quietly(pubsub: Any) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()


def _as_bytes(value: bytes | str | None) -> bytes | None:
    """A GET reply as bytes (a client that decodes responses gives text)."""
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)


class _Subscriber:
    """One pub/sub connection shared by every waiting get, re-established after errors.

    A get subscribes to its address's channel and waits for Redis to confirm the subscription
    before its second read, so a put can never fall between the read and the subscription.
    Channels nobody waits on are unsubscribed in batches.
    """

    def __init__(self, client: aioredis.Redis, *, sharded: bool = False) -> None:
        self._client = client
        #: sharded pub/sub (SSUBSCRIBE/SPUBLISH, for one Redis Cluster node) or the classic
        self._sharded = sharded
        self._message = "smessage" if sharded else "message"
        #: one (s)subscribe at a time: the first one opens the connection, and concurrent
        #: ones could otherwise open others whose confirmations nobody reads
        self._send_lock = asyncio.Lock()
        self._confirmation = "ssubscribe" if sharded else "subscribe"
        self._pubsub: Any = None
        self._waiters: dict[bytes, set[asyncio.Future[bytes | None]]] = {}
        self._confirmed: set[bytes] = set()
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        #: channels whose SUBSCRIBE is not sent yet (each has a ``_pending`` future)
        self._unsent: list[bytes] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def _wake(self, channel: bytes | None, value: bytes | None = None) -> None:
        channels = list(self._waiters) if channel is None else [channel]
        for ch in channels:
            for fut in self._waiters.get(ch, ()):
                if not fut.done():
                    fut.set_result(value)

    async def register(self, channel: bytes) -> asyncio.Future[bytes | None]:
        """A future resolved on the next publish to ``channel`` with the value it carried, or
        None (a wake-up without it, or the connection was lost): the caller reads again."""
        if self._closed:
            raise StoreError("redis subscriber is closed")
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, set()).add(fut)
        try:
            await self._subscribed(channel)
        except BaseException:
            self.unregister(channel, fut)
            raise
        return fut

    async def _subscribed(self, channel: bytes) -> None:
        if channel in self._confirmed:
            return
        pending = self._pending.get(channel)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[channel] = pending
            self._unsent.append(channel)
            try:
                async with self._send_lock:
                    # the channels of gets started in the same loop iteration (a stream
                    # starts its reads in groups), or while the last SUBSCRIBE was sent, go
                    # out together; SSUBSCRIBE takes channels of one slot only: one at a time
                    if not self._sharded:
                        await asyncio.sleep(0)
                    batch = self._unsent[:1] if self._sharded else self._unsent[:]
                    del self._unsent[: len(batch)]
                    if batch and self._pubsub is None:
                        self._pubsub = self._new_pubsub()
                    if batch and self._sharded:
                        await self._pubsub.ssubscribe(*batch)
                    elif batch:
                        await self._pubsub.subscribe(*batch)
            except (RedisError, OSError) as exc:
                # never reuse a pub/sub connection that failed once: start over cleanly
                broken = self._reset(f"subscribe failed: {exc}")
                if broken is not None:
                    asyncio.get_running_loop().create_task(_close_quietly(broken))
                raise StoreError(f"redis subscribe failed: {exc}") from None
            except BaseException:  # cancelled before its SUBSCRIBE went out: withdraw it
                if channel in self._unsent:
                    self._unsent.remove(channel)
                    if self._pending.pop(channel, None) is pending and not pending.done():
                        pending.set_exception(StoreError("redis subscribe was cancelled"))
                        pending.exception()
                raise
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run())
            self._changed.set()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(pending)
        except TimeoutError:
            raise StoreError("redis did not confirm a subscription in 5 s") from None

    def _new_pubsub(self) -> Any:
        """RESP3 (redis-py's default) gets the quiet push handler; RESP2 has none to replace."""
        protocol = self._client.connection_pool.connection_kwargs.get("protocol")
        if check_protocol_version(protocol, 3):
            return self._client.pubsub(push_handler_func=_pass_push)
        return self._client.pubsub()

    def unregister(self, channel: bytes, fut: asyncio.Future[bytes | None]) -> None:
        waiters = self._waiters.get(channel)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._waiters[channel]

    def _reset(self, error: str) -> Any:
        pubsub, self._pubsub = self._pubsub, None
        self._confirmed.clear()
        for pending in self._pending.values():
            if not pending.done():
                pending.set_exception(StoreError(f"redis subscription lost: {error}"))
                pending.exception()
        self._pending.clear()
        self._unsent.clear()
        self._wake(None)  # every waiting get reads again
        return pubsub

    async def _run(self) -> None:
        last_sweep = 0.0
        loop = asyncio.get_running_loop()
        while not self._closed:
            pubsub = self._pubsub
            if pubsub is None:  # lost: the next get's subscribe makes a new one
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._changed.wait()
                continue
            try:
                if loop.time() - last_sweep > 1.0:
                    last_sweep = loop.time()
                    idle = [ch for ch in self._confirmed if ch not in self._waiters]
                    if self._sharded:  # one at a time: channels of other slots
                        for ch in idle:
                            # a get may have come for it while we sent the last one
                            if ch not in self._waiters and ch not in self._pending:
                                self._confirmed.discard(ch)
                                await pubsub.sunsubscribe(ch)
                    elif idle:
                        self._confirmed.difference_update(idle)
                        await pubsub.unsubscribe(*idle)
                if not pubsub.subscribed:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._changed.wait()
                    continue
                connection = pubsub.connection
                if connection is None or not connection.is_connected:
                    raise RedisError("pub/sub connection was lost")
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                kind, channel = message.get("type"), message.get("channel")
                if kind == self._message:
                    data = message.get("data")
                    if isinstance(data, bytes) and data.startswith(VALUE_MARK):
                        self._wake(channel, data[len(VALUE_MARK) :])
                    else:
                        self._wake(channel)
                elif kind == self._confirmation:
                    self._confirmed.add(channel)
                    pending = self._pending.pop(channel, None)
                    if pending is not None and not pending.done():
                        pending.set_result(None)
            except (RedisError, OSError, RuntimeError) as exc:
                if self._pubsub is pubsub:
                    self._reset(f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        old = self._reset("closed")
        if old is not None:
            with contextlib.suppress(Exception):
                await old.aclose()


def _fail(batch: dict[bytes, list[asyncio.Future[bytes | str | None]]], error: Exception) -> None:
    for futures in batch.values():
        for fut in futures:
            if not fut.done():
                fut.set_exception(error)


class _Reads:
    """The reads asked for in one loop iteration go to the server as one ``MGET`` (the gets
    a stream starts together are subscribed by one SUBSCRIBE and then read together)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._queue: dict[bytes, list[asyncio.Future[bytes | str | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: bytes) -> bytes | str | None:
        loop = asyncio.get_running_loop()
        if not self._queue:
            loop.call_soon(self._flush)
        fut: asyncio.Future[bytes | str | None] = loop.create_future()
        self._queue.setdefault(key, []).append(fut)
        return await fut

    def _flush(self) -> None:
        batch, self._queue = self._queue, {}
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: dict[bytes, list[asyncio.Future[bytes | str | None]]]) -> None:
        keys = list(batch)
        try:
            if len(keys) == 1:
                values = [await self._client.get(keys[0])]
            else:
                values = await self._client.mget(keys)
        except asyncio.CancelledError:  # the store is closing: its gets must not hang
            _fail(batch, StoreError("redis store was closed"))
            raise
        except (RedisError, OSError) as exc:
            _fail(batch, exc)
            return
        for key, value in zip(keys, values, strict=True):
            for fut in batch[key]:
                if not fut.done():
                    fut.set_result(value)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class RedisKeyValue(WaitingStore):
    """What the single-server and cluster backends share: the put script call, the read, and
    the long-poll get that subscribes before its second read. Subclasses set the attributes
    below in ``__init__`` and say where a channel's subscriber is."""

    description: str
    max_value: int
    ttl: float
    #: signed puts (capability.py), stored write-once by the module or the script
    signed: bool
    #: write-once puts refused because other bytes held the address (dropped like a lost
    #: put: what is there stays)
    conflicts: int
    #: how the server checks signed puts (``redis_writeonce.SERVER_CHECKS``)
    server_check: str
    #: every server has keywire's module (None: not asked yet)
    module: bool | None
    _client: Any
    #: unsigned puts: ``SET PX`` (and the publish)
    _script: Any
    #: signed puts without the module: ``SET NX PX``, compare (and the publish)
    _once_script: Any
    #: the module's wake-up: ``PUBLISH``, ``SPUBLISH``, or None (waiting gets poll)
    _publish: str | None
    _module_lock: asyncio.Lock
    _first_read: FirstRead

    def _init_checks(self, server_check: str) -> None:
        self._first_read = FirstRead()
        self.server_check = check_server_check(server_check)
        self.module = None
        self._module_lock = asyncio.Lock()

    async def _servers_without_module(self) -> list[str]:
        """The servers that do not know ``KEYWIRE.PUT``."""
        raise NotImplementedError

    async def _learn_module(self) -> None:
        """Ask the servers once whether they have the module; with ``server_check="module"``
        its absence is a ``StoreRefused``, with ``"auto"`` a warning and the script."""
        async with self._module_lock:
            if self.module is not None:
                return
            if self.server_check == "script":
                self.module = False
                return
            try:
                missing = await self._servers_without_module()
            except (RedisError, RedisClusterException, OSError) as exc:
                raise self._error(exc) from None
            if missing and self.server_check == "module":
                raise StoreRefused(
                    f"{self.description}: keywire's Redis module is not loaded on "
                    f"{', '.join(missing)} (python -m keywire.store.redismodule build, then "
                    "redis-server --loadmodule PATH)"
                )
            self.module = not missing
            if missing and self.signed and self.description not in _WARNED:
                _WARNED.add(self.description)
                log.warning(
                    "%s: keywire's Redis module is not loaded on %s: signed puts are "
                    "write-once but the server does not check their signatures (readers do)",
                    self.description,
                    ", ".join(missing),
                )

    def _key(self, address: bytes) -> bytes:
        raise NotImplementedError

    def _channel(self, address: bytes) -> bytes:
        raise NotImplementedError

    async def _subscriber_for(self, channel: bytes) -> _Subscriber:
        raise NotImplementedError

    async def _start(self) -> None:
        """Called before every command (a cluster learns its slot map here)."""

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"{self.description}: {type(exc).__name__}: {exc}")

    async def put(self, address: bytes, value: bytes) -> None:
        check_address(address)
        if len(value) > self.max_value:
            raise ValueTooLarge(len(value), self.max_value)
        await self._start()
        key, channel = self._key(address), self._channel(address)
        if self.signed and self.module is None:
            await self._learn_module()
        try:
            if self.signed:
                if self.module:
                    outcome = await module_put(
                        self._client, key, value, self.ttl, self.max_value,
                        channel if self._publish else None, self._publish or "PUBLISH",
                    )  # fmt: skip
                else:
                    outcome = await put_once(
                        self._once_script, key, value, self.ttl, self.max_value, channel
                    )
                if outcome is PutOutcome.CONFLICT:
                    self.conflicts += 1
                return
            await self._script(
                keys=[key], args=[value, max(1, int(self.ttl * 1000)), self.max_value, channel]
            )
        except ResponseError as exc:
            if str(exc).startswith("TOOLARGE"):
                raise ValueTooLarge(len(value), self.max_value) from None
            refusal = module_refusal(exc)
            if refusal is not None:  # our own put, not signed for its key: a bug, not weather
                raise StoreRefused(f"{self.description} refused a put: {refusal}") from None
            raise self._error(exc) from None
        except (RedisError, OSError) as exc:
            raise self._error(exc) from None

    async def _read(self, address: bytes) -> bytes | None:
        await self._start()
        try:
            return _as_bytes(await self._client.get(self._key(address)))
        except (RedisError, OSError) as exc:
            raise self._error(exc) from None

    async def _read_subscribed(self, address: bytes) -> bytes | None:
        """The read after subscribing; the gets of one SUBSCRIBE come here together."""
        return await self._read(address)

    async def _wait(
        self, address: bytes, wait: float, guess: FirstRead | None = None
    ) -> bytes | None:
        """Subscribe to the address's channel, read, and wait for a put's publish (or read
        again after a wake-up without the value, or every ``RECHECK``)."""
        channel = self._channel(address)
        subscriber = await self._subscriber_for(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            fut = await subscriber.register(channel)
            try:
                # subscribed before this read: a put after it publishes to us
                value = await self._read_subscribed(address)
                if guess is not None:
                    guess.found(value is not None)
                    guess = None
                remaining = deadline - loop.time()
                if value is not None or remaining <= 0:
                    return value
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, RECHECK)):
                        value = await fut
                if value is not None:  # the put's publish carried it
                    return value
            finally:
                subscriber.unregister(channel, fut)
            # woken without the value, or the safety-net interval passed: read and wait again

    async def probe(self) -> None:
        """``PING``: shows an untrusted certificate or a refused password before a stream.
        Then, unless ``server_check="script"``, whether the servers have keywire's module:
        if they do, signing turns on (both ends probe the same store, so they agree)."""
        await self._start()
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise self._error(exc) from None
        if self.server_check == "script":
            return
        try:
            await self._learn_module()
        except StoreError as exc:
            if self.signed or self.server_check == "module":
                raise
            # an unsigned store stays unsigned (say, a user whose ACL forbids COMMAND INFO)
            log.debug("%s: could not ask for keywire's module: %s", self.description, exc)
            return
        if self.module:
            self.signed = True


class RedisStore(RedisKeyValue):
    """``RedisStore("redis://127.0.0.1:6379/0")``; ``rediss://`` for TLS, verified against the
    system trust store, or against ``cafile`` alone when given."""

    #: waiting gets started together share one SUBSCRIBE and one MGET
    read_group = True

    def __init__(
        self,
        url: str,
        *,
        max_value: int = DEFAULT_MAX_VALUE,
        ttl: float = DEFAULT_TTL,
        prefix: str = "kw:",
        cafile: str | None = None,
        signed: bool = False,
        server_check: str = "auto",
    ) -> None:
        parts = urlsplit(url)
        # never show a password from the URL
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"redis URL must be redis(s)://HOST[:PORT][/DB], got {shown!r}")
        self.url = url
        self.description = f"redis {shown}"
        self.max_value = max_value
        self.ttl = ttl
        self.signed = signed
        self.conflicts = 0
        self._prefix = prefix.encode()
        # no silent retries inside redis-py: the stream retries with its own backoff, and a
        # pub/sub connection that reconnects by itself could miss a publish unnoticed
        tls: dict[str, Any] = {}
        if parts.scheme == "rediss":
            # redis-py verifies the certificate and host name by default; say so anyway
            tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_certs": cafile}
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, max_connections=512, retry=Retry(NoBackoff(), 0),
            driver_info=DRIVER_INFO, **tls,
        )  # fmt: skip
        self._script = self._client.register_script(_PUT_SCRIPT)
        self._once_script = self._client.register_script(WRITE_ONCE_SCRIPT)
        self._publish = "PUBLISH"
        self._init_checks(server_check)
        self._subscriber = _Subscriber(self._client)
        self._reads = _Reads(self._client)

    async def _read_subscribed(self, address: bytes) -> bytes | None:
        try:
            return _as_bytes(await self._reads.get(self._key(address)))
        except (RedisError, OSError) as exc:
            raise self._error(exc) from None

    async def _servers_without_module(self) -> list[str]:
        reply = await self._client.execute_command("COMMAND INFO", MODULE_COMMAND)
        return [] if reply and reply[0] else [self.description]

    def _key(self, address: bytes) -> bytes:
        return self._prefix + b"v:" + address.hex().encode()

    def _channel(self, address: bytes) -> bytes:
        return self._prefix + b"w:" + address.hex().encode()

    def _error(self, exc: BaseException) -> StoreError:
        """A ``StoreRefused`` for what retrying cannot fix, else a ``StoreError``."""
        bad_certificate = verify_failure(exc)
        if bad_certificate is not None:
            return StoreRefused(f"{self.description}: {explain(bad_certificate)}")
        if isinstance(exc, AuthenticationError):
            return StoreRefused(f"{self.description}: authentication failed: {exc}")
        if isinstance(exc, OutOfMemoryError) or (
            isinstance(exc, ResponseError) and str(exc).startswith("OOM")
        ):
            return StoreFull(f"{self.description} is full (maxmemory): {exc}")
        return StoreError(f"{self.description}: {type(exc).__name__}: {exc}")

    async def _subscriber_for(self, channel: bytes) -> _Subscriber:
        return self._subscriber

    async def close(self) -> None:
        await self._subscriber.close()
        await self._reads.close()
        with contextlib.suppress(Exception):
            await self._client.aclose()
