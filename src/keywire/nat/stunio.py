"""The asyncio shells around ``nat.stun``: a STUN server (one UDP socket per port) and a client
that asks from a socket it is given, above all the KPS listener's or dialer's own socket, so the
mapping learned is the mapping the QUIC traffic uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..kps.udp import DatagramDemux, WebRTCHook, normalize_address
from ..kps.webrtc.ice import StunError
from .stun import Address, BindingResult, StunServerCore, binding_request, parse_binding_response

log = logging.getLogger("keywire.nat")

__all__ = [
    "StunClient",
    "StunEndpoint",
    "StunServer",
    "open_stun_endpoint",
    "parse_host_port",
    "query_demux",
    "resolve_server",
    "stun_on_demux",
]

#: first retransmission after this long, doubling (RFC 8489 §6.2.1 uses 500 ms; a doctor and a
#: punch want an answer sooner on a LAN, and the total is bounded by the caller's timeout)
FIRST_RTO = 0.25


def parse_host_port(text: str, default_port: int = 3478) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[V6]:PORT`` → (host, port); ``ValueError`` names what is wrong."""
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad STUN server {text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad STUN server {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, raw = text.split(":")
        port = _port(raw, text)
    if not host:
        raise ValueError(f"bad STUN server {text!r}: no host")
    return host, port


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"bad STUN server {text!r}: port must be 1..65535")
    return int(raw)


async def resolve_server(text: str, family: int = socket.AF_INET) -> Address:
    """Resolve ``HOST[:PORT]`` to one (ip, port) of ``family`` (IPv4 unless told)."""
    host, port = parse_host_port(text)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


class StunClient:
    """Pending Binding transactions on one socket; ``feed`` takes the answers to them."""

    def __init__(self, send: Callable[[bytes, Address], None]) -> None:
        self._send = send
        self._pending: dict[bytes, asyncio.Future[tuple[BindingResult, Address]]] = {}

    def feed(self, data: bytes, addr: Address) -> bool:
        """True if ``data`` answers one of our transactions (then it is consumed)."""
        if len(data) < 20 or data[8:20] not in self._pending:
            return False
        future = self._pending[data[8:20]]
        try:
            result = parse_binding_response(data)
        except StunError as exc:
            if not future.done():
                future.set_exception(exc)
            return True
        if not future.done():
            future.set_result((result, normalize_address(addr)))
        return True

    async def binding(
        self, server: Address, *, change_port: bool = False, timeout: float = 3.0
    ) -> tuple[BindingResult, Address]:
        """Ask ``server`` for our mapped address; returns (result, where the answer came from).

        Retransmits after 0.25 s, doubling, until ``timeout`` (``TimeoutError``)."""
        request = binding_request(change_port=change_port)
        txid = request[8:20]
        future: asyncio.Future[tuple[BindingResult, Address]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[txid] = future
        try:
            async with asyncio.timeout(timeout):
                rto = FIRST_RTO
                while True:
                    self._send(request, server)
                    done, _ = await asyncio.wait({future}, timeout=rto)
                    if done:
                        return future.result()
                    rto *= 2
        finally:
            del self._pending[txid]


class _DemuxHook:
    """Sits in front of the demux's WebRTC hook: answers to our requests are ours, the rest
    goes on to WebRTC (or back to the demux, which gives it to QUIC)."""

    def __init__(self, client: StunClient, inner: WebRTCHook | None) -> None:
        self.client = client
        self.inner = inner

    def knows(self, addr: Address) -> bool:
        return self.inner.knows(addr) if self.inner is not None else False

    def datagram_received(self, data: bytes, addr: Address) -> bool:
        if self.client.feed(data, addr):
            return True
        return self.inner.datagram_received(data, addr) if self.inner is not None else False


@contextlib.contextmanager
def stun_on_demux(demux: DatagramDemux) -> Iterator[StunClient]:
    """A STUN client on a KPS socket (``listener.demux`` or a dialer's) for the ``with`` body;
    the WebRTC side keeps working meanwhile and gets its hook back afterwards."""
    client = StunClient(demux.sendto)
    hook = _DemuxHook(client, demux.webrtc)
    demux.webrtc = hook
    try:
        yield client
    finally:
        if demux.webrtc is hook:
            demux.webrtc = hook.inner


async def query_demux(
    demux: DatagramDemux, server: Address, *, timeout: float = 3.0
) -> BindingResult:
    """This KPS socket's public address as ``server`` sees it."""
    with stun_on_demux(demux) as client:
        result, _ = await client.binding(server, timeout=timeout)
    return result


class _EndpointProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.client: StunClient | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.client is not None:
            self.client.feed(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the timeout decides
        log.debug("STUN socket error: %s", exc)


class StunEndpoint:
    """A UDP socket of our own with a STUN client on it (``keywire doctor``)."""

    def __init__(self, transport: asyncio.DatagramTransport, client: StunClient) -> None:
        self.transport = transport
        self.client = client

    @property
    def local(self) -> Address:
        name = self.transport.get_extra_info("sockname")
        return str(name[0]), int(name[1])

    def close(self) -> None:
        self.transport.close()


async def open_stun_endpoint(host: str = "0.0.0.0", port: int = 0) -> StunEndpoint:
    """Bind ``host:port`` (IPv4) and return a STUN client on it."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _EndpointProtocol, local_addr=(host, port), family=socket.AF_INET
    )
    client = StunClient(lambda data, addr: transport.sendto(data, addr))
    protocol.client = client
    return StunEndpoint(transport, client)


class _ServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer, index: int) -> None:
        self.server = server
        self.index = index

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.received(data, normalize_address(addr), self.index)


class StunServer:
    """Answers Binding requests on each of ``ports`` (``keywire relay --stun-port``).

    With two ports a request's CHANGE-REQUEST "change port" is answered from the other one."""

    def __init__(self, host: str, ports: list[int]) -> None:
        if not ports or len(ports) > 2:
            raise ValueError("a STUN server listens on one or two ports")
        self.host = host
        self.requested = list(ports)
        self.transports: list[asyncio.DatagramTransport] = []
        self.core = StunServerCore([])

    async def start(self) -> list[int]:
        """Bind every port; returns the bound ports (0 picks one)."""
        loop = asyncio.get_running_loop()
        try:
            for index, port in enumerate(self.requested):
                transport, _ = await loop.create_datagram_endpoint(
                    lambda index=index: _ServerProtocol(self, index),  # type: ignore[misc]
                    local_addr=(self.host, port),
                    family=socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                )
                self.transports.append(transport)
        except BaseException:
            self.close()
            raise
        self.core.local = [
            (str(t.get_extra_info("sockname")[0]), int(t.get_extra_info("sockname")[1]))
            for t in self.transports
        ]
        return [port for _, port in self.core.local]

    def received(self, data: bytes, source: Address, index: int) -> None:
        answer = self.core.datagram(data, source, index, time.monotonic())
        if answer is not None and answer.via < len(self.transports):
            self.transports[answer.via].sendto(answer.data, answer.to)

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.transports.clear()
