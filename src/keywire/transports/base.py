"""What the socket transports share: a listener over an asyncio server that announces per scope."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..address import Alternative, Scope, Section
from ..netinfo import addresses_for_scope
from ..pipe import Pipe
from ..plugin import Listening, PipeHandler

log = logging.getLogger("keywire.transport")


class ServerListening(Listening):
    """An asyncio server plus how to write a dialable section for a host."""

    def __init__(
        self,
        server: asyncio.AbstractServer | None,
        bind_host: str,
        port: int,
        make_section: Callable[[str, int], Section | None],
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.server = server
        self.bind_host = bind_host
        self.port = port
        self._make_section = make_section
        self._closer = closer

    def announce(self, scope: Scope) -> list[Alternative]:
        out: list[Alternative] = []
        for host in addresses_for_scope(self.bind_host, scope):
            section = self._make_section(host, self.port)
            if section is not None:
                out.append(Alternative((section,)))
        return out

    async def close(self) -> None:
        if self.server is not None:
            # stops accepting at once; wait_closed() would also wait for every accepted
            # connection, which the keywire Server closes itself, with its own code
            self.server.close()
        if self._closer is not None:
            self._closer()


async def run_pipe_handler(on_pipe: PipeHandler, pipe: Pipe) -> None:
    """Run the server's per-pipe handler; a failure is logged and the pipe torn down."""
    try:
        await on_pipe(pipe)
    except asyncio.CancelledError:
        pipe.abort()
        raise
    except Exception as exc:  # the server must outlive every bad client
        log.debug("connection from %s failed: %s", pipe.peer, exc)
        pipe.abort()
