"""``noauth`` — no handshake and no encryption: for links that are already trusted (a Unix socket,
a tunnel). Nothing goes on the wire, as in multiserver."""

from __future__ import annotations

from .address import Section
from .options import Options
from .pipe import Pipe
from .plugin import Transform
from .registry import Registry
from .stream import Connection


class NoAuthTransform(Transform):
    name = "noauth"

    async def client(
        self, pipe: Pipe, section: Section, options: Options, address: str
    ) -> Pipe | Connection:
        return pipe

    async def server(
        self, pipe: Pipe, section: Section, options: Options, address: str
    ) -> Pipe | Connection:
        return pipe

    def announce(self, section: Section, options: Options) -> Section:
        return Section("noauth")


def register(registry: Registry) -> None:
    registry.add_transform(NoAuthTransform())
