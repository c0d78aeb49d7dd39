"""Addresses ``http(s)://MAPSERVER~stream:SECRET`` and ``redis(s)://HOST:PORT/DB~stream:SECRET``.

Dialing takes Katzenpost's dialer role; listening takes the listener role (Katzenpost's
``Initiator``). Listening without a secret creates a fresh one, and ``announce`` gives the whole
address to hand to the dialer.

Every dial is a new *session* (``keywire.store.session``): the dialer announces a random
session id in the first free slot of the address, and the stream runs on keys derived from
the secret, the slot and that id, so a second dial never reads the first one's frames. The
listener waits for each slot in turn, claims the dial it finds there and hands out one
connection per session (when the dialer's first frame is read), while it goes on waiting for
the next slot.

Settings in ``Options.extra``: ``store.window``, ``store.value_size``, ``store.max_value``,
``store.ttl`` (Redis), ``store.linger`` (seconds ``close`` waits for acknowledgements),
``store.cafile`` (CA certificates for https:// and rediss://, instead of the system's) and
``store.token`` (the map server's bearer token; default ``$KEYWIRE_MAP_TOKEN``, so the CLI can
reach a protected server). For the CLI, ``$SSL_CERT_FILE`` names CA certificates too.

Both ends need the store when they start: a dial announces its session there and a listener
looks up where to start, each within ``options.timeout``, so a store that is down, refuses
us or is full fails the dial or the listen with the store's error instead of a silent wait.
Once a stream runs, store failures are retried until the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from ..address import Alternative, Scope, Section, redact
from ..errors import AddressError
from ..options import Options
from ..plugin import ChainHandler, ConnectionHandler, Listening
from ..registry import Registry
from .backends import HttpStore, RedisStore, StoreBackend, StoreError, StoreFull, StoreRefused
from .mapserver.mapauth import TOKEN_ENV
from .params import StoreParams
from .rendezvous import SessionDialer, SessionListener
from .schedule import Role
from .secret import SecretError, format_secret, generate_secret, parse_secret
from .session import RecordError, Session
from .stream import StoreConnection, StoreStream

log = logging.getLogger("keywire.store")

STORE_SCHEMES = ("http", "https", "redis", "rediss", "nats", "redis-cluster")
DEFAULT_STORE_VALUE = 1 << 16
#: long-poll time of the listener's wait for the next dial
DIAL_WAIT = 20.0
#: backoff bounds of the listener while the store fails
RETRY_MIN, RETRY_MAX = 0.2, 5.0


def _extra(options: Options, name: str, default: Any) -> Any:
    return options.extra.get(f"store.{name}", default)


def store_params(options: Options) -> StoreParams:
    return StoreParams(
        window=int(_extra(options, "window", 8)),
        value_size=int(_extra(options, "value_size", 16384)),
    )


def make_backend(section: Section, options: Options) -> StoreBackend:
    """The store client a URL section names."""
    assert section.url is not None
    max_value = int(_extra(options, "max_value", DEFAULT_STORE_VALUE))
    cafile = _extra(options, "cafile", None)
    if section.name == "nats":
        from .backends.nats import NatsStore  # nats-py loads only for nats:// addresses

        return NatsStore(
            section.url, max_value=max_value, ttl=float(_extra(options, "ttl", 3600.0))
        )
    if section.name == "redis-cluster":
        from .backends.rediscluster import RedisClusterStore

        return RedisClusterStore(
            section.url, max_value=max_value, ttl=float(_extra(options, "ttl", 3600.0))
        )
    if section.name in ("redis", "rediss"):
        return RedisStore(
            section.url,
            max_value=max_value,
            ttl=float(_extra(options, "ttl", 3600.0)),
            cafile=cafile,
        )
    token = _extra(options, "token", None) or os.environ.get(TOKEN_ENV, "").strip() or None
    return HttpStore(section.url, max_value=max_value, cafile=cafile, token=token)


async def _bounded[T](
    backend: StoreBackend, work: Callable[[], Awaitable[T]], timeout: float, doing: str
) -> T:
    """``work()`` within ``timeout``, tried again (with backoff) after a store error that is
    not a refusal: a slow connect under load is no reason to fail. When the time is up, a
    ``StoreError`` names the store and the last error; any failure closes ``backend``."""
    last: StoreError | None = None
    bound = timeout * 0.95  # inside the caller's own bound, so our message is the one seen
    try:
        async with asyncio.timeout(bound):
            for attempt in range(1_000_000):
                try:
                    return await work()
                except (StoreRefused, StoreFull):
                    raise
                except StoreError as exc:
                    last = exc
                await asyncio.sleep(min(RETRY_MAX, RETRY_MIN * 2 ** min(attempt, 10)))
        raise AssertionError("unreachable")  # pragma: no cover
    except TimeoutError:
        await backend.close()
        if last is not None:
            raise StoreError(f"{last} (still failing after {bound:.3g} s, {doing})") from None
        raise StoreError(
            f"{backend.description}: no answer in {bound:.3g} s while {doing}"
        ) from None
    except BaseException:
        await backend.close()
        raise


def stream_secret(alt: Alternative, *, required: bool) -> bytes | None:
    """The secret of the ``stream`` section; ``AddressError`` names what is wrong with it."""
    text = str(alt)
    section = alt.sections[1]
    if len(section.args) > 1:
        raise AddressError(
            text, len(str(alt.sections[0])) + 1, "'stream:SECRET' with exactly one argument"
        )
    if not section.args:
        if required:
            raise AddressError(
                text, len(text), "':SECRET' after 'stream' (the listener prints the full address)"
            )
        return None
    try:
        return parse_secret(section.args[0])
    except SecretError as exc:
        raise AddressError(text, len(str(alt.sections[0])) + len("~stream:"), str(exc)) from None


class _StoreListening(Listening):
    """Waits for one dial after another; each becomes a connection of its own."""

    def __init__(
        self,
        alt: Alternative,
        secret: bytes,
        options: Options,
        backend: StoreBackend,
        epoch: int,
        on_connection: ConnectionHandler,
    ) -> None:
        self._alt = alt
        self._secret = secret
        self._options = options
        self._backend = backend
        self._sessions = SessionListener(backend, secret, store_params(options).value_size)
        self._on_connection = on_connection
        self._full = Alternative((alt.sections[0], Section("stream", (format_secret(secret),))))
        #: sessions whose connection was not handed out yet (aborted by ``close``)
        self._waiting: dict[asyncio.Task[None], StoreConnection] = {}
        self.epoch = epoch
        self._task = asyncio.get_running_loop().create_task(self._accept())
        self._task.add_done_callback(_log_failure)

    def announce(self, scope: Scope) -> list[Alternative]:
        return [self._full]

    async def _accept(self) -> None:
        failures = 0
        while True:
            try:
                session = await self._sessions.take(self.epoch, DIAL_WAIT)
                if session is not None:
                    await self._sessions.claim(session)
            except RecordError as exc:
                log.warning("store listener: skipping session slot %d: %s", self.epoch, exc)
                self.epoch += 1
                continue
            except StoreRefused:
                raise
            except StoreError as exc:
                failures += 1
                delay = min(RETRY_MAX, RETRY_MIN * 2 ** min(failures - 1, 10))
                log.info("store listener: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if session is None:
                continue
            self.epoch += 1
            self._start(session)

    def _start(self, session: Session) -> None:
        options = self._options
        backend = make_backend(self._alt.sections[0], options)
        backend.signed = backend.signed or self._backend.signed  # as the listener's probe found
        stream = StoreStream.open(
            backend, session.secret, Role.LISTENER, params=store_params(options)
        )
        conn = stream.connection.named(
            redact(self._full),
            linger=float(_extra(options, "linger", 30.0)),
            owns_backend=backend,
        )
        log.info("store listener: session %d arrived", session.epoch)

        async def deliver() -> None:
            try:
                await stream.wait_peer()
            except Exception:
                self._waiting.pop(task, None)
                await conn.abort()
                raise
            self._waiting.pop(task, None)
            await self._on_connection(conn)

        task = asyncio.get_running_loop().create_task(deliver())
        self._waiting[task] = conn
        task.add_done_callback(_log_failure)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        waiting, self._waiting = self._waiting, {}
        for task, conn in waiting.items():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await conn.abort()  # its dialer never showed up: leave nothing in the store
        await self._backend.close()


class StoreStreamHandler(ChainHandler):
    name = "stream"

    def claims(self, alt: Alternative) -> bool:
        return alt.names in {(scheme, "stream") for scheme in STORE_SCHEMES}

    async def dial(self, alt: Alternative, options: Options) -> StoreConnection:
        secret = stream_secret(alt, required=True)
        assert secret is not None
        backend = make_backend(alt.sections[0], options)
        params = store_params(options)
        dialer = SessionDialer(backend, secret, params.value_size)
        session = await _bounded(
            backend,
            lambda: self._announce(backend, dialer),
            options.timeout,
            "announcing the session",
        )
        stream = StoreStream.open(backend, session.secret, Role.DIALER, params=params)
        return stream.connection.named(
            redact(alt),
            linger=float(_extra(options, "linger", 30.0)),
            owns_backend=backend,
        )

    @staticmethod
    async def _announce(backend: StoreBackend, dialer: SessionDialer) -> Session:
        await backend.probe()
        return await dialer.announce()

    async def listen(
        self, alt: Alternative, options: Options, on_connection: ConnectionHandler
    ) -> Listening:
        secret = stream_secret(alt, required=False)
        if secret is None:
            secret = generate_secret()
        backend = make_backend(alt.sections[0], options)

        async def first_epoch() -> int:
            await backend.probe()
            return await SessionListener(backend, secret).first_epoch()

        epoch = await _bounded(
            backend, first_epoch, options.timeout, "looking up the address's sessions"
        )
        return _StoreListening(alt, secret, options, backend, epoch, on_connection)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("store stream listener: %s", task.exception())


#: the ``store.*`` keys of ``Options.extra`` this plugin reads
SETTINGS = ("window", "value_size", "max_value", "ttl", "linger", "cafile", "token")


def register(registry: Registry) -> None:
    registry.add_handler(StoreStreamHandler())
    registry.declare_settings("store", SETTINGS)
