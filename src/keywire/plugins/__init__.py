"""Built-in plugins: each module listed here has ``register(registry)``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..chain import Registry

#: modules (relative to the keywire package) whose ``register`` adds plugins, in claim order
BUILTIN: tuple[str, ...] = (
    "transports.net",
    "transports.unix",
    "transports.ws",
    "transports.onion",
    "noauth",
    "shs.transform",
    "mux.transform",
    "link.handler",
    "kps",
    "store.handler",
)


def register_builtin(registry: Registry) -> None:
    for name in BUILTIN:
        module = importlib.import_module(f"keywire.{name}")
        module.register(registry)
