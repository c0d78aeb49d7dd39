"""Name → plugin: the built-in transports, transforms and chain handlers, and third-party ones.

Built-ins are listed here (not discovered) so their claim order is fixed; a third-party package
adds plugins through the ``keywire.plugins`` entry-point group, whose each entry point names a
``register(registry)`` callable (or a module that has one).

Loading is lazy and narrow: a lookup imports only the built-in modules that provide the section
names it asks about (``BUILTIN`` says which), so ``keywire dial 'net:…~shs'`` never imports
QUIC, WebRTC or Redis; a name no built-in provides loads everything, entry points included.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

from .address import Alternative
from .options import Options, unknown_setting
from .plugin import ChainHandler, Transform, Transport

log = logging.getLogger("keywire.registry")

#: modules (relative to the keywire package) whose ``register`` adds plugins, in claim order,
#: each with the section names and settings prefixes it provides
BUILTIN: tuple[tuple[str, frozenset[str]], ...] = (
    ("transports.net", frozenset({"net"})),
    ("transports.unix", frozenset({"unix"})),
    ("transports.ws", frozenset({"ws", "wss"})),
    ("transports.onion", frozenset({"onion"})),
    ("noauth", frozenset({"noauth"})),
    ("shs.transform", frozenset({"shs"})),
    ("mux.transform", frozenset({"mux"})),
    ("link.handler", frozenset({"link"})),
    ("kps", frozenset({"kps", "webrtc"})),
    ("webtransport", frozenset({"webtransport"})),
    (
        "store.handler",
        frozenset({"stream", "store", "http", "https", "redis", "rediss", "nats", "redis-cluster"}),
    ),
)

#: the entry-point group third-party transports register under
ENTRY_POINT_GROUP = "keywire.plugins"


class Registry:
    """Name → plugin; the order of handlers decides who claims an alternative first."""

    def __init__(self, *, builtin: bool = True) -> None:
        self.transports: dict[str, Transport] = {}
        self.transforms: dict[str, Transform] = {}
        self.handlers: list[ChainHandler] = []
        #: settings prefix (``kps``) → the keys its plugin reads from ``Options.extra``
        self.settings: dict[str, frozenset[str]] = {}
        self._builtin = builtin
        self._loaded = not builtin
        self._imported: set[str] = set()
        self._rank: dict[int, int] = {}
        self._current_rank = len(BUILTIN)

    def add_transport(self, plugin: Transport) -> None:
        self.transports[plugin.name] = plugin

    def add_transform(self, plugin: Transform) -> None:
        self.transforms[plugin.name] = plugin

    def add_handler(self, plugin: ChainHandler) -> None:
        """Add a handler; built-ins keep ``BUILTIN``'s claim order however lazily loaded."""
        self._rank[id(plugin)] = self._current_rank
        self.handlers.append(plugin)
        self.handlers.sort(key=lambda h: self._rank.get(id(h), len(BUILTIN)))

    def declare_settings(self, prefix: str, names: Iterable[str]) -> None:
        """Record the keys a plugin reads under ``prefix.``; declaring again adds to them."""
        self.settings[prefix] = self.settings.get(prefix, frozenset()) | frozenset(names)

    def check_settings(self, options: Options) -> None:
        """Raise ``ValueError`` for the first key of ``options.extra`` no plugin declared."""
        self.provide(key.partition(".")[0] for key in options.extra)
        for key in options.extra:
            prefix, dot, name = key.partition(".")
            if not dot or prefix not in self.settings:
                known = ", ".join(sorted(f"{p}.*" for p in self.settings))
                raise ValueError(f"unknown setting {key!r} (known prefixes: {known})")
            if name not in self.settings[prefix]:
                raise unknown_setting(key, prefix, self.settings[prefix])

    def _import(self, rank: int) -> None:
        module = BUILTIN[rank][0]
        if module in self._imported:
            return
        self._imported.add(module)
        self._current_rank = rank
        try:
            importlib.import_module(f"keywire.{module}").register(self)
        finally:
            self._current_rank = len(BUILTIN)

    def provide(self, names: Iterable[str]) -> None:
        """Make sure the plugins for these section names (or settings prefixes) are loaded."""
        if self._loaded:
            return
        for name in names:
            ranks = [i for i, (_, provides) in enumerate(BUILTIN) if name in provides]
            if not ranks:
                self.load()
                return
            for rank in ranks:
                self._import(rank)

    def load(self) -> None:
        """Import every built-in, then the entry points (once); a broken third-party plugin is
        logged and skipped so it cannot take the built-ins down."""
        if self._loaded:
            return
        self._loaded = True
        if self._builtin:
            for rank in range(len(BUILTIN)):
                self._import(rank)
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                target: Any = point.load()
                register: Callable[[Registry], None] = getattr(target, "register", target)
                register(self)
            except Exception as exc:
                log.warning("plugin %s (%s) failed to load: %s", point.name, point.value, exc)

    def handler_for(self, alt: Alternative) -> ChainHandler | None:
        self.provide(section.name for section in alt.sections)
        return next((h for h in self.handlers if h.claims(alt)), None)

    def transport(self, name: str) -> Transport:
        self.provide((name,))
        return self.transports[name]

    def transform(self, name: str) -> Transform:
        self.provide((name,))
        return self.transforms[name]

    def understands(self, alt: Alternative) -> str | None:
        """None if this alternative can be dialed, else why not (for the attempt list)."""
        if self.handler_for(alt) is not None:
            return None
        transport = self.transports.get(alt.transport.name)
        if transport is None or not transport.accepts(alt.transport):
            return f"unknown transport {alt.transport.name!r}"
        for section in alt.transforms:
            if section.name not in self.transforms:
                return f"unknown transform {section.name!r}"
        return None


#: the registry ``dial`` and ``Server`` consult
registry = Registry()


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "Registry", "registry"]
