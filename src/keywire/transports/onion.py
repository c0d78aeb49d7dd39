"""``onion:HOST:PORT`` — TCP through a SOCKS5 proxy (Tor at 127.0.0.1:9050, then 9150).

Client only: a Tor onion service is served by listening with ``net:`` behind Tor."""

from __future__ import annotations

import asyncio

from python_socks import ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy

from ..address import Section, split_host_port
from ..errors import Code, StreamError, UnsupportedError
from ..options import Options
from ..pipe import Pipe, StreamPipe
from ..plugin import Listening, PipeHandler, Transport
from ..registry import Registry
from .net import READ_LIMIT


class OnionTransport(Transport):
    name = "onion"

    async def connect(self, section: Section, options: Options) -> Pipe:
        host, port = split_host_port(section)
        failures: list[str] = []
        for proxy_host, proxy_port in options.socks_proxies:
            proxy = Proxy(ProxyType.SOCKS5, proxy_host, proxy_port, rdns=True)
            try:
                sock = await proxy.connect(host, port, timeout=options.timeout)
            except (OSError, ProxyError, ProxyTimeoutError) as exc:
                failures.append(f"socks5 {proxy_host}:{proxy_port}: {exc}")
                continue
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
            return StreamPipe(reader, writer, f"onion:{host}:{port}")
        raise StreamError(
            Code.NETWORK_ERROR, f"cannot reach {host}:{port} through Tor: " + "; ".join(failures)
        )

    async def listen(self, section: Section, options: Options, on_pipe: PipeHandler) -> Listening:
        raise UnsupportedError("onion: listen with net: and publish it as a Tor onion service")


def register(registry: Registry) -> None:
    registry.add_transport(OnionTransport())
