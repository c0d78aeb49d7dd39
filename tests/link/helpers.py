"""Shared pieces for the end-to-end tests: an echo host and a client dial via the handler."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from keywire.address import parse
from keywire.identity import Identity
from keywire.link import cli
from keywire.link.handler import LinkHandler
from keywire.options import Options
from keywire.stream import Connection


@dataclass
class EchoHost:
    """A Link host that echoes every stream, listening on one or more relays."""

    urls: list[str]
    store: Path
    code: str | None = None
    code_id: bytes | None = None
    announced: str = ""
    listenings: list[object] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    code_shown: asyncio.Event = field(default_factory=asyncio.Event)
    #: more ``Options.extra`` for the listen specs (e.g. ``link.recovery_key``)
    extra: dict[str, object] = field(default_factory=dict)

    async def start(self, pairing_code: bool | str = True) -> EchoHost:
        handler = LinkHandler()
        options = Options(
            identity=Identity.generate(),
            timeout=5.0,
            extra={
                "link.store_dir": str(self.store),
                "link.pairing_code": pairing_code,
                "link.on_pairing_code": self._on_code,
                **self.extra,
            },
        )
        for url in self.urls:
            listening = await handler.listen(
                parse(f"{url}~link").alternatives[0], options, self._serve
            )
            self.listenings.append(listening)
        alts = [a for lst in self.listenings for a in lst.announce("public")]  # type: ignore[attr-defined]
        self.announced = ";".join(str(a) for a in alts)
        if pairing_code:
            await asyncio.wait_for(self.code_shown.wait(), 5)
        return self

    def _on_code(self, address: str, code: str, code_id: bytes | None) -> None:
        self.code, self.code_id = code, code_id
        self.code_shown.set()

    @property
    def host(self):  # type: ignore[no-untyped-def]
        return self.listenings[0].host  # type: ignore[attr-defined]

    async def _serve(self, conn: Connection) -> None:
        self.connections.append(conn)
        async for stream in conn:
            task = asyncio.get_running_loop().create_task(self._echo(stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _echo(stream) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(Exception):
            while chunk := await stream.read():
                await stream.write(chunk)
            await stream.close_write()

    async def close(self) -> None:
        for conn in self.connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
        for listening in self.listenings:
            await listening.close()  # type: ignore[attr-defined]
        for task in list(self.tasks):
            task.cancel()


async def dial(alternative: str, code: str | None = None, timeout: float = 5.0) -> Connection:
    extra: dict[str, object] = {}
    if code is not None:
        extra["link.pairing_code"] = code
    return await LinkHandler().dial(
        parse(alternative).alternatives[0], Options(timeout=timeout, extra=extra)
    )


async def echo_once(conn: Connection, payload: bytes) -> bytes:
    """Send ``payload`` on a new stream and read the echo concurrently (windows are bounded)."""
    stream = await conn.open_stream()
    reader = asyncio.get_running_loop().create_task(stream.read_all())
    try:
        await stream.write(payload)
        await stream.close_write()
        return await asyncio.wait_for(reader, 10)
    finally:
        reader.cancel()


def parse_link_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the Link subcommands (pair, credentials, relay) as the CLI does."""
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)
