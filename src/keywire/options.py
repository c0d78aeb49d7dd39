"""Settings shared by dialers and servers, and the one reader of per-plugin settings.

``Options`` carries the common fields; plugins keep their own settings in ``Options.extra``
under a prefix (``kps.idle_timeout``, ``store.window``). A misspelt setting must never be
silently ignored: every plugin declares its keys with the registry, which checks them before
``dial`` or ``Server.start`` opens anything, and ``read_settings`` is the one reader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .identity import Identity

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


def make_options(options: Options | None, overrides: dict[str, Any]) -> Options:
    """Options with keyword overrides applied (``dial(addr, timeout=3)``); the caller's object
    is never changed."""
    base = dataclasses.replace(options) if options is not None else Options()
    for key, value in overrides.items():
        if not hasattr(base, key):
            raise TypeError(f"unknown option {key!r}")
        setattr(base, key, value)
    return base


def unknown_setting(key: str, prefix: str, names: Iterable[str]) -> ValueError:
    """The error for a misspelt ``prefix.name`` key, listing the known ones."""
    listed = ", ".join(f"{prefix}.{n}" for n in sorted(names))
    return ValueError(f"unknown setting {key!r} (known: {listed})")


def as_number(raw: object) -> float | None:
    """``raw`` as a number if it is one or is text of one (``--set link.x=5``), else None;
    True and False are not numbers here. Callers check the range and name the key."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return raw
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return None
    return None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def setting_value(key: str, kind: object, raw: object) -> bool | int | float:
    """``raw`` as the setting ``key`` of type ``kind`` (``bool``, ``int`` or ``float``, or its
    name, as dataclass fields give it); text is accepted as ``--set key=value`` gives it. The
    one coercion every plugin's settings use, so a bad value fails the same way everywhere:
    ``ValueError`` naming ``key``."""
    if kind in (bool, "bool"):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower() if isinstance(raw, (str, int)) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"{key} must be true or false, got {raw!r}")
    value = as_number(raw)
    if kind in (float, "float"):
        if value is None:
            raise ValueError(f"{key} must be a number, got {raw!r}")
        return float(value)
    if value is None or not float(value).is_integer():
        raise ValueError(f"{key} must be a whole number, got {raw!r}")
    return int(value)


def read_settings(options: Options, prefix: str, known: Iterable[str]) -> dict[str, Any]:
    """The ``options.extra`` entries under ``prefix`` (``"kps."``), keyed by bare name.

    Raises ``ValueError`` for a key under ``prefix`` that is not in ``known``.
    """
    names = set(known)
    out: dict[str, Any] = {}
    for key, value in options.extra.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            if name not in names:
                raise unknown_setting(key, prefix.rstrip("."), names)
            out[name] = value
    return out


#: the former name of ``read_settings``
prefixed_extra = read_settings


__all__ = [
    "SSB_APP_KEY",
    "Authorize",
    "Options",
    "as_number",
    "make_options",
    "prefixed_extra",
    "read_settings",
    "setting_value",
    "unknown_setting",
]
