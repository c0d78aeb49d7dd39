"""One UDP socket for QUIC and WebRTC: the socket owner and the datagram demultiplexer.

KPS serves native QUIC and browser WebRTC on one port (KPS §2.3). The demultiplexer routes each
datagram by structure, not by RFC 7983's first-byte table (QUIC short headers overlap it):

1. a v4-mapped source (``::ffff:a.b.c.d`` on a dual-stack socket) is normalised to plain IPv4;
2. a source the WebRTC hook already knows (an established or in-progress peer) → WebRTC;
3. a STUN message (length ≥ 20, top two bits of byte 0 zero, magic cookie at bytes 4..8) →
   WebRTC, which may decline it (then it falls through);
4. everything else → QUIC, which routes by connection id and drops what it cannot place.

**The WebRTC hook** is any object with two methods, attached with ``demux.webrtc = hook``::

    knows(addr) -> bool                       # is this source one of your peers?
    datagram_received(data, addr) -> bool     # True if consumed, False to let QUIC have it

It replies through ``demux.sendto(data, addr)``; addresses are ``(host, port)`` with IPv4 hosts
in plain dotted form whatever the socket family.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import HandshakeError

try:  # qh3's batched UDP transport (recvmmsg/GRO in, GSO out); plain asyncio otherwise
    from qh3.asyncio._transport import create_optimized_datagram_transport
except ImportError:  # pragma: no cover - an older or newer qh3 layout
    create_optimized_datagram_transport = None  # type: ignore[assignment]
try:  # what ``start_demux`` needs to start that transport without its event-loop passes
    from qh3.asyncio._transport import OptimizedDatagramTransport, enable_gro, has_gso
except ImportError:  # pragma: no cover - an older or newer qh3 layout
    OptimizedDatagramTransport = None  # type: ignore[assignment,misc]

log = logging.getLogger("keywire.kps")

Address = tuple[Any, ...]
QuicBatch = Callable[[list[bytes], Address], None]
STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
#: socket buffers large enough for a window of full-size packets at loopback speed
SOCKET_BUFFER = 4 << 20
#: largest datagram read (UDP's maximum payload)
READ_SIZE = 65535
#: the GRO segment size qh3's transport assumes when none is given
GRO_SEGMENT = 1280


async def resolve(host: str, port: int) -> tuple[str, int]:
    """An IP literal as is; a name (``localhost``) through the resolver, IPv4 first.

    Here, not in a dialer, because the QUIC and the WebRTC dialer both resolve the same way.
    """
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise HandshakeError(f"kps: cannot resolve {host!r}: {exc}") from None
    infos.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
    return str(infos[0][4][0]), port


class WebRTCHook(Protocol):
    """The interface the WebRTC side implements to share the listener's socket."""

    def knows(self, addr: Address) -> bool:
        """True if ``addr`` is a WebRTC peer (established or handshaking)."""
        ...

    def datagram_received(self, data: bytes, addr: Address) -> bool:
        """Handle one datagram; return False to pass it on to QUIC."""
        ...


def looks_like_stun(data: bytes) -> bool:
    """RFC 5389 framing: 20+ bytes, top two bits of byte 0 zero, the magic cookie at 4..8."""
    return len(data) >= 20 and data[0] & 0xC0 == 0 and data[4:8] == STUN_MAGIC_COOKIE


def normalize_address(addr: Address) -> Address:
    """``(host, port)`` with a v4-mapped IPv6 host turned into plain IPv4."""
    host = addr[0]
    if isinstance(host, str) and host.startswith("::ffff:"):
        with contextlib.suppress(ValueError):
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
            if mapped is not None:
                return (str(mapped), addr[1])
    return (host, addr[1])


class DatagramDemux(asyncio.DatagramProtocol):
    """Owns the UDP socket; hands each datagram to WebRTC or QUIC (module docstring)."""

    def __init__(self, quic: QuicBatch) -> None:
        #: receives QUIC datagrams in batches from one source (the transport reads in bursts)
        self.quic = quic
        self.webrtc: WebRTCHook | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._v6 = False
        self.counts = {"quic": 0, "webrtc": 0, "stun_declined": 0, "errors": 0}
        self.closed = asyncio.get_running_loop().create_future()

    # -- asyncio protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self._v6 = sock is not None and sock.family == socket.AF_INET6

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.datagrams_received([data], addr)

    def datagrams_received(self, datagrams: list[bytes], addr: Address) -> None:
        """A burst from one source (qh3's batched transport); each datagram routed alone."""
        source = normalize_address(addr)
        hook = self.webrtc
        if hook is not None:
            datagrams = [d for d in datagrams if not self._to_webrtc(hook, d, source)]
            if not datagrams:
                return
        self.counts["quic"] += len(datagrams)
        try:
            self.quic(datagrams, source)
        except Exception:  # one bad datagram must not stop the listener
            log.exception("QUIC dispatch failed on a datagram from %s", source)
            self.counts["errors"] += 1

    def _to_webrtc(self, hook: WebRTCHook, data: bytes, source: Address) -> bool:
        try:
            if hook.knows(source) or looks_like_stun(data):
                if hook.datagram_received(data, source):
                    self.counts["webrtc"] += 1
                    return True
                self.counts["stun_declined"] += 1
        except Exception:  # a WebRTC bug must not take the QUIC side down
            log.exception("WebRTC hook failed on a datagram from %s", source)
            self.counts["errors"] += 1
            return True
        return False

    def error_received(self, exc: Exception) -> None:
        # ICMP port-unreachable and friends: QUIC's own timers deal with dead peers
        log.debug("UDP error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    # -- sending ----------------------------------------------------------------------------------
    def _socket_address(self, addr: Address) -> Address:
        host = addr[0]
        if self._v6 and ":" not in host:
            return ("::ffff:" + host, addr[1], 0, 0)
        return addr

    def sendto(self, data: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.sendto(data, self._socket_address(addr))

    def sendto_many(self, datagrams: list[bytes], addr: Address) -> None:
        """Send a burst to one address (GSO where the transport has it)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        target = self._socket_address(addr)
        many = getattr(transport, "sendto_many", None)
        if many is not None:
            many(datagrams, target)
        else:
            for data in datagrams:
                transport.sendto(data, target)

    @property
    def local_address(self) -> Address:
        assert self.transport is not None
        sockname: Address = self.transport.get_extra_info("sockname")
        return normalize_address(sockname)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def bind_socket(host: str, port: int, *, dual_stack: bool = True) -> socket.socket:
    """A UDP socket on ``host:port``; a wildcard (``0.0.0.0``, ``::``, empty) binds dual-stack
    unless ``dual_stack`` is False (a dialer's socket only needs its target's family)."""
    if dual_stack and host in ("", "0.0.0.0", "::"):
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError:
            sock = None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
            except OSError:
                sock.close()
                if host == "::":
                    raise
            else:
                _tune(sock)
                return sock
        host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if family == socket.AF_INET and _is_ipv4(host):
        where: Address = (host, port)  # every dial binds 0.0.0.0: no resolver round (~0.1 ms)
    else:
        where = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)[0][4]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(where)
    except OSError:
        sock.close()
        raise
    _tune(sock)
    return sock


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


async def start_demux(sock: socket.socket, quic: QuicBatch) -> DatagramDemux:
    """Run a demultiplexer on a bound socket, on qh3's batched transport where available."""
    loop = asyncio.get_running_loop()
    try:
        if OptimizedDatagramTransport is not None and sys.platform == "linux":
            return _start_batched(loop, sock, quic)
        if create_optimized_datagram_transport is not None:
            _, protocol = await create_optimized_datagram_transport(
                loop, lambda: DatagramDemux(quic), sock=sock
            )
        else:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: DatagramDemux(quic), sock=sock
            )
    except BaseException:
        sock.close()
        raise
    assert isinstance(protocol, DatagramDemux)
    return protocol


def _start_batched(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, quic: QuicBatch
) -> DatagramDemux:
    """qh3's batched transport, started in this call: what ``create_optimized_datagram_transport``
    does on Linux, without the three ``call_soon`` passes it takes to call ``connection_made``,
    register the reader and wake its waiter (a dialer makes one transport per dial: ~30 µs of
    CPU and two event-loop passes before the ClientHello; issue 17)."""
    sock.setblocking(False)  # a caller's socket (``dial(sock=...)``) may not be yet
    protocol = DatagramDemux(quic)
    transport = OptimizedDatagramTransport(
        loop=loop,
        sock=sock,
        protocol=protocol,
        address=None,
        gro_enabled=enable_gro(sock),
        gso_enabled=has_gso(sock),
        gro_segment_size=GRO_SEGMENT,
    )
    try:
        protocol.connection_made(transport)
        transport._register_reader()
    except BaseException:
        transport.abort()
        raise
    return protocol


async def open_demux(host: str, port: int, quic: QuicBatch) -> DatagramDemux:
    """Bind ``host:port`` and start demultiplexing into ``quic`` (and a WebRTC hook, once set)."""
    return await start_demux(bind_socket(host, port), quic)
