"""How address sections become connections: the plugin interfaces and their registry.

Three kinds of plugin:

* ``Transport`` — the first section of a composed chain (net, ws, unix, onion); dials or listens
  and yields ``Pipe`` objects.
* ``Transform`` — a later section (shs, noauth, mux); wraps a pipe into a pipe or a Connection.
* ``ChainHandler`` — takes a whole alternative the composition model does not fit (kps, whose
  QUIC has its own streams; Link; store streams) and yields Connections directly.

Plugins register by name; ``registry`` is what ``dial`` and ``Server`` consult.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .address import Alternative, Scope, Section
from .identity import Identity
from .pipe import Pipe
from .stream import Connection

#: SSB's main network app key (``ssb-caps``)
SSB_APP_KEY = "1KHLiKZvAvjbY1ziZEHMXawbCEIM6qwjCDm3VYRan/s="

#: decides whether an shs client key may connect (return falsy or raise to refuse)
Authorize = Callable[[bytes], Awaitable[object] | object]


@dataclass
class Options:
    """Settings shared by dialers and servers; every limit has a sane default."""

    identity: Identity | None = None
    #: shs network key (base64 or 32 raw bytes); defaults to SSB's main network
    app_key: str | bytes = SSB_APP_KEY
    #: connect + handshake bound for one alternative, seconds
    timeout: float = 10.0
    handshake_timeout: float = 5.0
    #: server: called with the client's shs public key
    authorize: Authorize | None = None
    #: SOCKS5 proxies tried in order for onion:
    socks_proxies: tuple[tuple[str, int], ...] = (("127.0.0.1", 9050), ("127.0.0.1", 9150))
    #: server: most connections served at once (further ones are refused)
    max_connections: int = 1024
    #: mux: streams the peer may have open at once
    max_streams: int = 256
    #: free-form settings for plugins (``kps.idle_timeout`` …)
    extra: dict[str, Any] = field(default_factory=dict)

    def need_identity(self) -> Identity:
        if self.identity is None:
            self.identity = Identity.load_or_create()
        return self.identity


def prefixed_extra(options: Options, prefix: str, known: Iterable[str]) -> dict[str, Any]:
    """The ``options.extra`` entries under ``prefix`` (``"kps."``), keyed by bare name.

    A misspelt key must not be silently ignored, so an unknown one is an error that lists the
    known ones.
    """
    names = set(known)
    out: dict[str, Any] = {}
    for key, value in options.extra.items():
        if key.startswith(prefix):
            name = key[len(prefix):]
            if name not in names:
                listed = ", ".join(prefix + n for n in sorted(names))
                raise ValueError(f"unknown setting {key!r} (known: {listed})")
            out[name] = value
    return out


PipeHandler = Callable[[Pipe], Awaitable[None]]
ConnectionHandler = Callable[[Connection], Awaitable[None]]


class Listening(ABC):
    """A running listener: what it announces, and how to stop it."""

    @abstractmethod
    def announce(self, scope: Scope) -> list[Alternative]:
        """Dialable alternatives for ``scope`` (transport part, or whole chain for handlers)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop accepting; existing connections are the server's to close."""


class Transport(ABC):
    name: str = ""

    def accepts(self, section: Section) -> bool:
        return section.name == self.name

    @abstractmethod
    async def connect(self, section: Section, options: Options) -> Pipe:
        """Open a pipe to the address in ``section``."""

    async def listen(self, section: Section, options: Options, on_pipe: PipeHandler) -> Listening:
        """Listen on ``section`` (port 0 picks one); ``on_pipe`` runs per accepted pipe."""
        raise NotImplementedError(f"{self.name}: this transport cannot listen")


class Transform(ABC):
    name: str = ""

    @abstractmethod
    async def client(self, pipe: Pipe, section: Section, options: Options,
                     address: str) -> Pipe | Connection:
        """Dialer side over ``pipe``."""

    @abstractmethod
    async def server(self, pipe: Pipe, section: Section, options: Options,
                     address: str) -> Pipe | Connection:
        """Listener side over ``pipe``."""

    def announce(self, section: Section, options: Options) -> Section:
        """The section as a dialer must write it (e.g. ``shs`` → ``shs:KEY``)."""
        return section

    def check(self, section: Section) -> None:
        """Reject a malformed dial section before anything is connected (default: accept)."""
        return None


class ChainHandler(ABC):
    """Owns whole alternatives whose shape it recognises."""

    name: str = ""

    @abstractmethod
    def claims(self, alt: Alternative) -> bool:
        """True if this handler dials/listens on ``alt``."""

    @abstractmethod
    async def dial(self, alt: Alternative, options: Options) -> Connection: ...

    async def listen(self, alt: Alternative, options: Options,
                     on_connection: ConnectionHandler) -> Listening:
        raise NotImplementedError(f"{self.name}: cannot listen")


class Registry:
    """Name → plugin; the order of handlers decides who claims an alternative first."""

    def __init__(self) -> None:
        self.transports: dict[str, Transport] = {}
        self.transforms: dict[str, Transform] = {}
        self.handlers: list[ChainHandler] = []
        self._loaded = False

    def add_transport(self, plugin: Transport) -> None:
        self.transports[plugin.name] = plugin

    def add_transform(self, plugin: Transform) -> None:
        self.transforms[plugin.name] = plugin

    def add_handler(self, plugin: ChainHandler) -> None:
        self.handlers.append(plugin)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            from . import plugins

            plugins.register_builtin(self)

    def handler_for(self, alt: Alternative) -> ChainHandler | None:
        self._load()
        return next((h for h in self.handlers if h.claims(alt)), None)

    def understands(self, alt: Alternative) -> str | None:
        """None if this alternative can be dialed, else why not (for the attempt list)."""
        self._load()
        if self.handler_for(alt) is not None:
            return None
        transport = self.transports.get(alt.transport.name)
        if transport is None or not transport.accepts(alt.transport):
            return f"unknown transport {alt.transport.name!r}"
        for section in alt.transforms:
            if section.name not in self.transforms:
                return f"unknown transform {section.name!r}"
        return None


registry = Registry()


async def with_timeout[T](awaitable: Awaitable[T], seconds: float | None, what: str) -> T:
    """``asyncio.timeout`` that says what timed out."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise TimeoutError(f"{what} timed out after {seconds:g} s") from None
