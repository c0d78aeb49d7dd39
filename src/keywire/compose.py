"""Running the transforms of one alternative over a pipe — the one loop ``dial`` and
``Server`` share.

A chain is ``transport~transform~…``: each transform turns a pipe into a pipe (shs, noauth) or
into a connection (mux), and nothing may follow a connection. A chain that still ends in a pipe
becomes a ``SingleStreamConnection``.
"""

from __future__ import annotations

from enum import Enum

from .address import Alternative, redact
from .errors import KeywireError
from .options import Options
from .pipe import Pipe
from .pipeconn import SingleStreamConnection
from .registry import registry
from .stream import Connection


class Side(Enum):
    """Which end of the chain this process is."""

    CLIENT = "client"
    SERVER = "server"


async def compose(alt: Alternative, pipe: Pipe, options: Options, side: Side) -> Connection:
    """Run ``alt``'s transforms over ``pipe`` as ``side``; the connection's address names the
    chain (dialer: the alternative, secrets redacted; server: what the peer proved)."""
    result: Pipe | Connection = pipe
    address = pipe.peer if side is Side.SERVER else str(Alternative(alt.sections[:1]))
    previous = alt.transport
    for section in alt.transforms:
        if not isinstance(result, Pipe):
            raise KeywireError(
                f"{section.name!r} cannot follow {previous.name!r}, which already multiplexes"
            )
        transform = registry.transform(section.name)
        if side is Side.CLIENT:
            address = f"{address}~{section}"
            result = await transform.client(result, section, options, address)
        else:
            result = await transform.server(result, section, options, f"{address}~{section.name}")
            address = f"{address}~{transform.peer_section(section, result, options)}"
        previous = section
    if isinstance(result, Pipe):
        return SingleStreamConnection(result, redact(alt) if side is Side.CLIENT else address)
    return result


__all__ = ["Side", "compose"]
