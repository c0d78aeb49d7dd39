"""The ``mux`` address section: multiplexing over whatever byte pipe the chain built below it."""

from __future__ import annotations

from typing import Any

from ..address import Section
from ..errors import KeywireError
from ..options import Options, read_settings
from ..pipe import Pipe
from ..plugin import Transform
from ..registry import Registry
from ..stream import Connection
from .connection import MuxConnection
from .session import MuxConfig

#: ``Options.extra`` keys this transform reads, with the ``MuxConfig`` field each sets
EXTRA_KEYS: dict[str, str] = {
    "mux.window": "window",
    "mux.max_window": "max_window",
    "mux.connection_window": "connection_window",
    "mux.max_frame": "max_frame",
    "mux.keepalive_interval": "keepalive_interval",
    "mux.keepalive_timeout": "keepalive_timeout",
}


def config_from_options(options: Options) -> MuxConfig:
    """``max_streams`` from Options, windows and keep-alive from ``options.extra['mux.*']``."""
    fields: dict[str, Any] = {"max_streams": options.max_streams}
    try:
        extra = read_settings(options, "mux.", (k[len("mux.") :] for k in EXTRA_KEYS))
    except ValueError as exc:
        raise KeywireError(f"mux: {exc}") from None
    for name, value in extra.items():
        fields[EXTRA_KEYS["mux." + name]] = value
    try:
        return MuxConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise KeywireError(f"bad mux option: {exc}") from None


def _check_section(section: Section) -> None:
    if section.args or section.url is not None:
        raise KeywireError(f"the mux section takes no arguments, got {str(section)!r}")


def _connection(
    pipe: Pipe, section: Section, options: Options, address: str, *, client: bool
) -> MuxConnection:
    _check_section(section)
    return MuxConnection(pipe, client=client, config=config_from_options(options), address=address)


class MuxTransform(Transform):
    """Wraps a pipe into a ``MuxConnection``; the dialer is the yamux client."""

    name = "mux"

    async def client(
        self, pipe: Pipe, section: Section, options: Options, address: str
    ) -> Pipe | Connection:
        return _connection(pipe, section, options, address, client=True)

    async def server(
        self, pipe: Pipe, section: Section, options: Options, address: str
    ) -> Pipe | Connection:
        return _connection(pipe, section, options, address, client=False)

    def announce(self, section: Section, options: Options) -> Section:
        return Section("mux")


def register(registry: Registry) -> None:
    registry.add_transform(MuxTransform())
    registry.declare_settings("mux", (k.removeprefix("mux.") for k in EXTRA_KEYS))
