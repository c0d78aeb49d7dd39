"""``unix:PATH`` — a Unix domain socket (mode 0600, this device only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from ..address import Section
from ..errors import AddressError, Code, StreamError
from ..options import Options
from ..pipe import Pipe, StreamPipe
from ..plugin import Listening, PipeHandler, Transport
from ..registry import Registry
from .base import ServerListening, run_pipe_handler
from .net import READ_LIMIT


def socket_path(section: Section) -> str:
    path = ":".join(section.args)
    if not path:
        raise AddressError(str(section), len(section.name), "':PATH' after 'unix'")
    return path


def _remove_stale(path: str) -> None:
    """Unlink a socket file nobody listens on (a crashed server's); refuse a live one."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another server is listening there")


class UnixTransport(Transport):
    name = "unix"

    async def connect(self, section: Section, options: Options) -> Pipe:
        path = socket_path(section)
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=READ_LIMIT)
        except OSError as exc:
            raise StreamError(
                Code.NETWORK_ERROR, f"cannot connect to unix:{path}: {exc.strerror or exc}"
            ) from None
        return StreamPipe(reader, writer, f"unix:{path}")

    async def listen(self, section: Section, options: Options, on_pipe: PipeHandler) -> Listening:
        path = socket_path(section)
        _remove_stale(path)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await run_pipe_handler(on_pipe, StreamPipe(reader, writer, f"unix:{path}"))

        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(accepted, path, limit=READ_LIMIT)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

        def unlink() -> None:
            with contextlib.suppress(OSError):
                os.unlink(path)

        def make(host: str, port: int) -> Section | None:
            return Section("unix", (path,))

        return ServerListening(server, "localhost", 0, make, unlink)


def register(registry: Registry) -> None:
    registry.add_transport(UnixTransport())
