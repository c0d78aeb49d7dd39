"""``webtransport.*`` settings: the transport's own limits and timers, read through the one
settings reader so a misspelt key is refused (naming the known ones) before anything opens.

The transport runs on KPS's QUIC machinery, so most names and defaults are KPS's
(``webtransport.idle_timeout`` is to ``webtransport:`` what ``kps.idle_timeout`` is to ``kps:``);
``kps.*`` settings no longer reach ``webtransport:``. ``close_linger`` is WebTransport's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from ..kps.settings import KpsSettings, coerce_number
from ..options import Options, read_settings

PREFIX = "webtransport."
NAME = "webtransport"

#: the KPS limits and timers a WebTransport connection uses, under ``webtransport.``
SHARED = tuple(f.name for f in fields(KpsSettings))
#: default seconds a closing side keeps its connection driven so that a lost
#: CLOSE_WEBTRANSPORT_SESSION capsule is retransmitted before CONNECTION_CLOSE follows
CLOSE_LINGER = 1.0
KNOWN = (*SHARED, "close_linger")


@dataclass(frozen=True)
class WtSettings:
    """The ``KpsSettings`` the QUIC layer gets, plus WebTransport's own timers."""

    quic: KpsSettings = dataclasses.field(default_factory=KpsSettings)
    #: seconds a close waits for its capsule to be acknowledged (retransmitting it as QUIC
    #: retransmits any stream data) before CONNECTION_CLOSE ends the connection
    close_linger: float = CLOSE_LINGER

    def __post_init__(self) -> None:
        if self.close_linger < 0:
            raise ValueError(f"{PREFIX}close_linger must not be negative, got {self.close_linger}")

    @classmethod
    def from_options(cls, options: Options) -> WtSettings:
        """Defaults, then the shared ``Options`` fields, then ``webtransport.*`` in ``extra``."""
        given = read_settings(options, PREFIX, KNOWN)
        linger = coerce_number(
            "close_linger", float, given.pop("close_linger", CLOSE_LINGER), PREFIX
        )
        kinds = {f.name: f.type for f in fields(KpsSettings)}
        values: dict[str, Any] = {
            "handshake_timeout": options.handshake_timeout,
            "max_connections": options.max_connections,
        }
        for name, value in given.items():
            values[name] = coerce_number(name, kinds[name], value, PREFIX)
        try:
            quic = KpsSettings(**values)
        except ValueError as exc:
            # KpsSettings names its own prefix; the key the user wrote is ours
            raise ValueError(str(exc).replace("kps.", PREFIX)) from None
        return cls(quic, linger)


__all__ = ["CLOSE_LINGER", "KNOWN", "NAME", "PREFIX", "WtSettings"]
