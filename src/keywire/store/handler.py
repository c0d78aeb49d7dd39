"""Addresses ``http(s)://MAPSERVER~stream:SECRET`` and ``redis(s)://HOST:PORT/DB~stream:SECRET``.

Dialing takes Katzenpost's dialer role; listening takes the listener role (Katzenpost's
``Initiator``). Listening without a secret creates a fresh one, and ``announce`` gives the whole
address to hand to the dialer. A dialer always puts frame 0 at once (a bare Start), so the
listener learns that it arrived even if the dialer's application only reads; the listener's
connection is handed out when that frame is read. One secret pairs exactly two ends, so a
listener serves one connection.

Settings in ``Options.extra``: ``store.window``, ``store.value_size``, ``store.max_value``,
``store.ttl`` (Redis), ``store.linger`` (seconds ``close`` waits for acknowledgements),
``store.cafile`` (CA certificates for https:// and rediss://, instead of the system's) and
``store.token`` (the map server's bearer token; default ``$KEYWIRE_MAP_TOKEN``, so the CLI can
reach a protected server). For the CLI, ``$SSL_CERT_FILE`` names CA certificates too.

Before a stream starts, one cheap request (``probe``) checks the store, so an untrusted
certificate or a refused token fails the dial or the listen with a clear error rather than
inside the stream; a store that is merely unreachable is left to the stream's retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from ..address import Alternative, Scope, Section, redacted
from ..chain import ChainHandler, ConnectionHandler, Listening, Options, Registry
from ..errors import AddressError
from .backend import StoreBackend, StoreError, StoreRefused
from .mapauth import TOKEN_ENV
from .mapclient import HttpStore
from .params import StoreParams
from .redisstore import RedisStore
from .schedule import Role
from .secret import SecretError, format_secret, generate_secret, parse_secret
from .stream import StoreConnection, StoreStream

log = logging.getLogger("keywire.store")

STORE_SCHEMES = ("http", "https", "redis", "rediss")
DEFAULT_STORE_VALUE = 1 << 16
#: most seconds the probe before a stream may take (a slow store is not a refusal)
PROBE_TIMEOUT = 5.0


def _extra(options: Options, name: str, default: Any) -> Any:
    return options.extra.get(f"store.{name}", default)


def store_params(options: Options) -> StoreParams:
    return StoreParams(window=int(_extra(options, "window", 8)),
                       value_size=int(_extra(options, "value_size", 16384)))


def make_backend(section: Section, options: Options) -> StoreBackend:
    """The store client a URL section names."""
    assert section.url is not None
    max_value = int(_extra(options, "max_value", DEFAULT_STORE_VALUE))
    cafile = _extra(options, "cafile", None)
    if section.name in ("redis", "rediss"):
        return RedisStore(section.url, max_value=max_value,
                          ttl=float(_extra(options, "ttl", 3600.0)), cafile=cafile)
    token = _extra(options, "token", None) or os.environ.get(TOKEN_ENV, "").strip() or None
    return HttpStore(section.url, max_value=max_value, cafile=cafile, token=token)


async def checked_backend(section: Section, options: Options) -> StoreBackend:
    """``make_backend``, then its probe: a refusal raises ``StoreRefused`` (the backend closed),
    anything else is logged and left to the stream, which retries."""
    backend = make_backend(section, options)
    try:
        async with asyncio.timeout(min(options.timeout, PROBE_TIMEOUT)):
            await backend.probe()
    except StoreRefused:
        await backend.close()
        raise
    except (StoreError, TimeoutError) as exc:
        log.info("%s: not answering yet (%s); the stream will retry", backend.description,
                 exc or "timed out")
    return backend


def stream_secret(alt: Alternative, *, required: bool) -> bytes | None:
    """The secret of the ``stream`` section; ``AddressError`` names what is wrong with it."""
    text = str(alt)
    section = alt.sections[1]
    if len(section.args) > 1:
        raise AddressError(text, len(str(alt.sections[0])) + 1,
                           "'stream:SECRET' with exactly one argument")
    if not section.args:
        if required:
            raise AddressError(text, len(text), "':SECRET' after 'stream' (the listener "
                                                "prints the full address)")
        return None
    try:
        return parse_secret(section.args[0])
    except SecretError as exc:
        raise AddressError(text, len(str(alt.sections[0])) + len("~stream:"), str(exc)) from None


class _StoreListening(Listening):
    def __init__(self, alt: Alternative, secret: bytes, conn: StoreConnection,
                 task: asyncio.Task[None]) -> None:
        self._alt = alt
        self._secret = secret
        self._conn = conn
        self._task = task

    def announce(self, scope: Scope) -> list[Alternative]:
        stream = Section("stream", (format_secret(self._secret),))
        return [Alternative((self._alt.sections[0], stream))]

    async def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            await self._conn.abort()      # no dialer came: leave nothing in the store


class StoreStreamHandler(ChainHandler):
    name = "stream"

    def claims(self, alt: Alternative) -> bool:
        return alt.names in {(scheme, "stream") for scheme in STORE_SCHEMES}

    async def dial(self, alt: Alternative, options: Options) -> StoreConnection:
        secret = stream_secret(alt, required=True)
        assert secret is not None
        backend = await checked_backend(alt.sections[0], options)
        stream = StoreStream.open(backend, secret, Role.DIALER, params=store_params(options))
        return StoreConnection(stream, redacted(alt),
                               linger=float(_extra(options, "linger", 30.0)),
                               owns_backend=backend)

    async def listen(self, alt: Alternative, options: Options,
                     on_connection: ConnectionHandler) -> Listening:
        secret = stream_secret(alt, required=False)
        if secret is None:
            secret = generate_secret()
        backend = await checked_backend(alt.sections[0], options)
        stream = StoreStream.open(backend, secret, Role.LISTENER, params=store_params(options))
        full = Alternative((alt.sections[0], Section("stream", (format_secret(secret),))))
        conn = StoreConnection(stream, redacted(full),
                               linger=float(_extra(options, "linger", 30.0)),
                               owns_backend=backend)

        async def deliver() -> None:
            await stream.wait_peer()
            await on_connection(conn)

        task = asyncio.get_running_loop().create_task(deliver())
        task.add_done_callback(_log_failure)
        return _StoreListening(alt, secret, conn, task)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("store stream listener ended: %s", task.exception())


def register(registry: Registry) -> None:
    registry.add_handler(StoreStreamHandler())
