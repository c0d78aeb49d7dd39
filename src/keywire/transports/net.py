"""``net:HOST:PORT`` — TCP, IPv4 and IPv6 (bare IPv6 hosts, as multiserver writes them)."""

from __future__ import annotations

import asyncio
import socket

from ..address import Section, host_port_args, split_host_port
from ..errors import Code, StreamError
from ..options import Options
from ..pipe import Pipe, StreamPipe
from ..plugin import Listening, PipeHandler, Transport
from ..registry import Registry
from .base import ServerListening, run_pipe_handler

#: how much a pipe's StreamReader buffers before it stops reading the socket (backpressure)
READ_LIMIT = 1 << 20


def tcp_peer(writer: asyncio.StreamWriter, scheme: str = "net") -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        return f"{scheme}:{host}:{peer[1]}"
    return f"{scheme}:{peer}"


def _tune(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening socket; ``::`` is dual-stack (IPv4 clients too), as multiserver's net is."""
    if host in ("::", ""):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        bind: tuple[str, int] = ("::", port)
    else:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = info[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        bind = (str(addr[0]), int(addr[1]))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(bind)
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def open_tcp(host: str, port: int, scheme: str = "net") -> StreamPipe:
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT)
    except OSError as exc:
        raise StreamError(
            Code.NETWORK_ERROR, f"cannot connect to {host}:{port}: {exc.strerror or exc}"
        ) from None
    _tune(writer)
    return StreamPipe(reader, writer, tcp_peer(writer, scheme))


class NetTransport(Transport):
    name = "net"

    async def connect(self, section: Section, options: Options) -> Pipe:
        host, port = split_host_port(section)
        return await open_tcp(host, port)

    async def listen(self, section: Section, options: Options, on_pipe: PipeHandler) -> Listening:
        host, port = split_host_port(section, allow_zero=True)
        sock = bind_tcp(host, port)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _tune(writer)
            await run_pipe_handler(on_pipe, StreamPipe(reader, writer, tcp_peer(writer)))

        server = await asyncio.start_server(accepted, sock=sock, limit=READ_LIMIT)
        bound_port = sock.getsockname()[1]
        return ServerListening(
            server,
            host,
            bound_port,
            lambda h, p: Section("net", host_port_args(h, p)),
        )


def register(registry: Registry) -> None:
    registry.add_transport(NetTransport())
