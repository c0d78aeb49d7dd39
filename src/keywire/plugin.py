"""The plugin interfaces: how address sections become pipes and connections.

Three kinds of plugin:

* ``Transport`` — the first section of a composed chain (net, ws, unix, onion); dials or listens
  and yields ``Pipe`` objects.
* ``Transform`` — a later section (shs, noauth, mux); wraps a pipe into a pipe or a Connection.
* ``ChainHandler`` — takes a whole alternative the composition model does not fit (kps, whose
  QUIC has its own streams; Link; store streams) and yields Connections directly.

Plugins register with ``keywire.registry``; ``compose`` runs the transforms of a chain for both
the dialer and the server.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from .address import Alternative, Scope, Section
from .options import Options
from .pipe import Pipe
from .stream import Connection

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
    """The first section of a chain: carries bytes between two hosts."""

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
    """A later section of a chain: wraps a pipe into a pipe or a connection."""

    name: str = ""

    @abstractmethod
    async def client(
        self, pipe: Pipe, section: Section, options: Options, address: str
    ) -> Pipe | Connection:
        """Dialer side over ``pipe``."""

    @abstractmethod
    async def server(
        self, pipe: Pipe, section: Section, options: Options, address: str
    ) -> Pipe | Connection:
        """Listener side over ``pipe``."""

    def announce(self, section: Section, options: Options) -> Section:
        """The section as a dialer must write it (e.g. ``shs`` → ``shs:KEY``)."""
        return section

    def peer_section(
        self, section: Section, result: Pipe | Connection, options: Options
    ) -> Section:
        """Server side: the section as the *peer* proved it, for the connection's address
        (e.g. ``shs:CLIENTKEY``); by default the announced section."""
        return self.announce(section, options)

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

    async def listen(
        self, alt: Alternative, options: Options, on_connection: ConnectionHandler
    ) -> Listening:
        raise NotImplementedError(f"{self.name}: cannot listen")


__all__ = [
    "ChainHandler",
    "ConnectionHandler",
    "Listening",
    "PipeHandler",
    "Transform",
    "Transport",
]
