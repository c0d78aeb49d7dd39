"""The aiortc + aioice engine, assembled from its ORTC-level parts with per-connection subclasses.

Instead of ``RTCPeerConnection`` (which wants signalling, gathers on every interface and, given
no ICE servers, would use a public STUN server) each peer is built from an ICE agent, a DTLS
transport and an SCTP transport directly, configured from the SDP that KPS synthesizes:

* ``SharedSocketIce`` — the server's ICE agent; its one host candidate is the listener's shared
  UDP socket, reached through ``VirtualDatagramTransport`` (sends go to the demultiplexer, which
  feeds received packets back in).
* ``DialerIce`` — the dialer's agent: one socket bound to the address that routes to the server.
* ``AcceptAnyClientDtls`` — a KPS server does not authenticate dialers, so this server's DTLS
  records the client's certificate instead of checking it against the fabricated offer's
  placeholder. ``PinnedDtls`` (the dialer) keeps aiortc's check, which is the certhash pin.
* ``KpsSctp`` — reports the association's end before its channels close (so losing the network
  is not mistaken for a protocol violation) and refuses a DCEP OPEN on an id in use instead of
  tripping aiortc's assertion.

Nothing is patched globally: every override lives on objects this module creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import Callable
from typing import Any, cast

from aioice import Candidate
from aioice import Connection as IceConnection
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol
from aiortc import (
    RTCCertificate,
    RTCDataChannel,
    RTCDataChannelParameters,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceTransport,
    RTCSctpCapabilities,
    RTCSctpTransport,
)
from aiortc.sdp import MediaDescription, SessionDescription
from cryptography import x509

from ...identity import Identity, fingerprint_hex
from .early import bind_host_candidate
from .engine import BUFFER_LOW, ChannelEvents, PeerLink
from .wire import CONTROL_CHANNEL, CONTROL_LABEL, DATAGRAM_CHANNEL, DATAGRAM_LABEL

Address = tuple[str, int]
SendTo = Callable[[bytes, Address], None]

_DCEP = 50
_DCEP_ACK = 2
_DCEP_OPEN = 3
CLOSE_FLUSH = 0.25
#: how often ``wait_delivered`` looks at the SCTP queues
DELIVERY_POLL = 0.005


class EngineError(ConnectionError):
    """ICE, DTLS or SCTP could not be established; ``stage`` says which."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(message)


# -- ICE -------------------------------------------------------------------------------------


class VirtualDatagramTransport(asyncio.DatagramTransport):
    """A datagram transport whose sends go to a shared socket's ``sendto``."""

    def __init__(
        self, sendto: SendTo, protocol: asyncio.DatagramProtocol, local_addr: Address
    ) -> None:
        super().__init__()
        self._sendto = sendto
        self._protocol = protocol
        self._local_addr = local_addr
        self._closing = False

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if not self._closing and addr is not None:
            self._sendto(bytes(data), (addr[0], addr[1]))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._local_addr if name == "sockname" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def _host_candidate(host: str, port: int) -> Candidate:
    return Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=1,
        transport="udp",
        priority=candidate_priority(1, "host"),
        host=host,
        port=port,
        type="host",
    )


class _ActivityMixin:
    """Reports every packet the agent receives (ICE checks and DTLS) as peer activity."""

    on_activity: Callable[[], None] | None = None

    def _seen(self) -> None:
        if self.on_activity is not None:
            self.on_activity()


class SharedSocketIce(_ActivityMixin, IceConnection):
    """The server's controlled ICE agent for one ufrag, on the listener's shared socket."""

    def __init__(self, *, ufrag: str, password: str, sendto: SendTo, local: Address) -> None:
        super().__init__(ice_controlling=False, local_username=ufrag, local_password=password)
        self.protocol = StunProtocol(self)
        self.protocol.connection_made(VirtualDatagramTransport(sendto, self.protocol, local))
        self.protocol.local_candidate = _host_candidate(*local)

    async def gather_candidates(self) -> None:
        if not self._local_candidates_start:
            self._local_candidates_start = True
            self._protocols.append(self.protocol)
            self._local_candidates.append(self.protocol.local_candidate)
            self._local_candidates_end = True

    def feed(self, data: bytes, addr: Address) -> None:
        """A datagram the demultiplexer routed to this peer."""
        self._seen()
        self.protocol.datagram_received(data, addr)


def route_source(ip: str) -> str:
    """The local address the OS would send from to reach ``ip`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, 9))
        return str(probe.getsockname()[0])


class DialerIce(_ActivityMixin, IceConnection):
    """The dialer's controlling ICE agent: one host candidate, toward the server only."""

    def __init__(self, *, ufrag: str, password: str, server_ip: str) -> None:
        v6 = ":" in server_ip
        super().__init__(
            ice_controlling=True,
            local_username=ufrag,
            local_password=password,
            use_ipv4=not v6,
            use_ipv6=v6,
        )
        self._server_ip = server_ip

    async def gather_candidates(self) -> None:
        if not self._local_candidates_start:
            self._local_candidates_start = True
            # early.py: resend unanswered setup packets after 30 ms, not aioice's 500 ms
            protocol, candidate = await bind_host_candidate(self, route_source(self._server_ip))
            self._protocols.append(protocol)
            self._local_candidates.append(candidate)
            self._local_candidates_end = True

    # the agent's own socket: count what the peer sends (its checks, and DTLS records)
    def data_received(self, data: bytes, component: int) -> None:
        self._seen()
        super().data_received(data, component)

    def request_received(self, message: Any, addr: tuple[str, int], protocol: StunProtocol) -> None:
        self._seen()
        super().request_received(message, addr, protocol)


class _Gatherer(RTCIceGatherer):
    """An ``RTCIceGatherer`` around an ICE agent built here (and no STUN server)."""

    def __init__(self, connection: IceConnection) -> None:
        super().__init__(iceServers=[])
        self._connection = connection


# -- DTLS ------------------------------------------------------------------------------------


class AcceptAnyClientDtls(RTCDtlsTransport):
    """Server DTLS: the dialer is anonymous; keep its fingerprint for the record."""

    peer_fingerprint: str | None = None

    def _validate_peer_identity(self, remoteParameters: RTCDtlsParameters) -> None:
        assert self._ssl is not None
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        if cert is not None:
            der = cert.public_bytes(_der_encoding())
            self.peer_fingerprint = fingerprint_hex(hashlib.sha256(der).digest())


class PinnedDtls(RTCDtlsTransport):
    """Dialer DTLS: aiortc's fingerprint check is the certhash pin; remember if it failed."""

    pin_failed = False
    presented: bytes | None = None

    def _validate_peer_identity(self, remoteParameters: RTCDtlsParameters) -> None:
        assert self._ssl is not None
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        if cert is not None:
            self.presented = hashlib.sha256(cert.public_bytes(_der_encoding())).digest()
        super()._validate_peer_identity(remoteParameters)
        if self.state == "failed":
            self.pin_failed = True


def _der_encoding() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def certificate_for(identity: Identity) -> RTCCertificate:
    """The identity's own P-256 certificate, so the SDP fingerprint is the certhash."""
    return RTCCertificate(
        identity.p256_key, x509.load_der_x509_certificate(identity.certificate_der)
    )


# -- SCTP ------------------------------------------------------------------------------------


class KpsSctp(RTCSctpTransport):
    """SCTP that reports its end first and treats a duplicate DCEP OPEN as a violation."""

    def __init__(self, transport: RTCDtlsTransport, link: AiortcLink) -> None:
        super().__init__(transport)
        self._link = link

    def _set_state(self, state: RTCSctpTransport.State) -> None:
        if state == self.State.CLOSED:
            self._link.lost("SCTP association closed")
        super()._set_state(state)

    async def _data_channel_receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == _DCEP and data:
            if data[0] == _DCEP_OPEN and stream_id in self._data_channels:
                self._link.violation(f"DCEP OPEN for channel {stream_id}, which is in use")
                return
            if data[0] == _DCEP_ACK and stream_id not in self._data_channels:
                return
        await super()._data_channel_receive(stream_id, pp_id, data)

    def queue_message(self, channel: RTCDataChannel, data: bytes) -> None:
        """Send even while a DCEP channel awaits its ACK (RFC 8832 allows it)."""
        self._data_channel_send(channel, data)

    @property
    def idle(self) -> bool:
        """Nothing queued, in flight or unacknowledged."""
        return not (self._data_channel_queue or self._outbound_queue or self._sent_queue)


# -- the link --------------------------------------------------------------------------------


class RemoteDescription:
    """The parts of a synthesized SDP an ORTC-level engine needs."""

    def __init__(self, sdp: str) -> None:
        desc = SessionDescription.parse(sdp)
        if len(desc.media) != 1 or desc.media[0].kind != "application":
            raise ValueError("KPS SDP carries exactly one application m-line")
        media: MediaDescription = desc.media[0]
        if media.dtls is None or media.sctp_port is None or media.ice is None:
            raise ValueError("KPS SDP lacks ICE credentials, a fingerprint or an sctp-port")
        self.ice: RTCIceParameters = media.ice
        self.dtls = media.dtls
        self.sctp_port = media.sctp_port
        self.max_message_size = (
            media.sctpCapabilities.maxMessageSize if media.sctpCapabilities else 65536
        )
        self.candidates = list(media.ice_candidates)


class AiortcLink(PeerLink):
    """One peer connection on aiortc's transports, exposed as numbered data channels."""

    def __init__(self, ice: IceConnection, certificate: RTCCertificate, *, server: bool) -> None:
        self.server = server
        self.ice_agent = ice
        self.ice = RTCIceTransport(_Gatherer(ice))
        dtls_cls = AcceptAnyClientDtls if server else PinnedDtls
        self.dtls: RTCDtlsTransport = dtls_cls(self.ice, [certificate])
        self.dtls._set_role("server" if server else "client")
        self.sctp = KpsSctp(self.dtls, self)
        self._channels: dict[int, RTCDataChannel] = {}
        self._lost = False
        self._closed = False
        self._connected = False
        self.control = self._negotiated(CONTROL_CHANNEL, CONTROL_LABEL, ordered=True)
        self.datagrams = self._negotiated(
            DATAGRAM_CHANNEL, DATAGRAM_LABEL, ordered=False, max_retransmits=0
        )
        self.sctp.on("datachannel", self._on_datachannel)
        self.dtls.on("statechange", self._on_dtls_state)
        if isinstance(ice, _ActivityMixin):
            ice.on_activity = self._activity

    def _activity(self) -> None:
        if self._reporting():
            self.events.on_activity()

    # -- setup -----------------------------------------------------------------------------
    def _negotiated(
        self, channel: int, label: str, *, ordered: bool, max_retransmits: int | None = None
    ) -> RTCDataChannel:
        dc = RTCDataChannel(
            self.sctp,
            RTCDataChannelParameters(
                label=label,
                ordered=ordered,
                maxRetransmits=max_retransmits,
                negotiated=True,
                id=channel,
            ),
        )
        self._channels[channel] = dc
        if channel == CONTROL_CHANNEL:
            dc.on("open", self._control_open)
        dc.on("message", lambda m: self._message(channel, m))
        dc.on("close", lambda: self._channel_closed(channel))
        return dc

    def _control_open(self) -> None:
        if self._reporting():
            self.events.on_control_open()

    def _reporting(self) -> bool:
        return hasattr(self, "events") and not self._lost

    async def start(self, remote: RemoteDescription) -> None:
        """Run ICE, then DTLS, then start SCTP; ``EngineError`` names the stage that failed."""
        await self.ice.iceGatherer.gather()
        for candidate in remote.candidates:
            await self.ice.addRemoteCandidate(candidate)
        if remote.candidates:
            # the dialer knows the server's only candidate; a server learns the dialer's address
            # from its checks (peer-reflexive), so it never declares end-of-candidates: aioice
            # would prune the component and never complete
            await self.ice.addRemoteCandidate(None)
        await self.ice.start(remote.ice)
        if self.ice.state != "completed":
            raise EngineError("ice", "ICE connectivity checks failed")
        await self.dtls.start(remote.dtls)
        if self.dtls.state != "connected":
            raise EngineError("dtls", "DTLS handshake failed")
        self._connected = True
        await self.sctp.start(
            RTCSctpCapabilities(maxMessageSize=remote.max_message_size), remote.sctp_port
        )

    # -- events from aiortc ----------------------------------------------------------------
    def _message(self, channel: int, message: bytes | str) -> None:
        if not self._reporting():
            return
        if isinstance(message, str):
            self.violation(f"text message on channel {channel}; KPS sends binary only")
        elif channel == CONTROL_CHANNEL:
            self.events.on_control_message(message)
        elif channel == DATAGRAM_CHANNEL:
            self.events.on_datagram(message)
        else:
            self.events.on_channel_message(channel, message)

    def _on_datachannel(self, dc: RTCDataChannel) -> None:
        channel = dc.id
        if channel is None:
            return
        self._channels[channel] = dc
        dc.on("message", lambda m: self._message(channel, m))
        dc.on("close", lambda: self._channel_closed(channel))
        if self._reporting():
            self.events.on_channel_open(channel)

    def _channel_closed(self, channel: int) -> None:
        self._channels.pop(channel, None)
        if self._reporting() and not self._closed:
            self.events.on_channel_closed(channel)

    def _on_dtls_state(self) -> None:
        if self._connected and self.dtls.state in ("closed", "failed"):
            self.lost(f"DTLS {self.dtls.state}")

    def lost(self, reason: str) -> None:
        if not self._lost and not self._closed:
            if hasattr(self, "events"):
                self.events.on_lost(reason)
            self._lost = True

    def violation(self, reason: str) -> None:
        if self._reporting():
            self.events.on_violation(reason)

    # -- PeerLink --------------------------------------------------------------------------
    events: ChannelEvents

    def send(self, channel: int, data: bytes) -> None:
        dc = self._channels.get(channel)
        if dc is not None and dc.readyState in ("connecting", "open") and not self._lost:
            self.sctp.queue_message(dc, data)

    def open_channel(self, channel: int) -> None:
        dc = RTCDataChannel(
            self.sctp, RTCDataChannelParameters(label=f"kps-{channel}", ordered=True, id=channel)
        )
        self._channels[channel] = dc
        dc.on("message", lambda m: self._message(channel, m))
        dc.on("close", lambda: self._channel_closed(channel))

    def close_channel(self, channel: int) -> None:
        dc = self._channels.get(channel)
        if dc is not None:
            dc.close()

    def send_datagram(self, data: bytes) -> None:
        if self.datagrams.readyState == "open":
            self.datagrams.send(data)

    def buffered_amount(self, channel: int) -> int:
        dc = self._channels.get(channel)
        return dc.bufferedAmount if dc is not None else 0

    async def wait_buffered_low(self, channel: int) -> None:
        dc = self._channels.get(channel)
        if dc is None or dc.bufferedAmount <= BUFFER_LOW:
            return
        dc.bufferedAmountLowThreshold = BUFFER_LOW
        done = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        dc.once("bufferedamountlow", wake)
        dc.once("close", wake)
        try:
            await done
        finally:
            dc.remove_listener("bufferedamountlow", wake)
            dc.remove_listener("close", wake)

    async def wait_delivered(self) -> None:
        """SCTP has nothing queued, in flight or unacknowledged (polled: aiortc has no event)."""
        while not self.sctp.idle and not self._lost and not self._closed and self._connected:
            await asyncio.sleep(DELIVERY_POLL)

    async def close(self, *, flush: bool) -> None:
        if self._closed:
            return
        if flush and not self._lost and self._connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH):
                    await self.wait_delivered()
        self._closed = True
        for stage in (self.sctp.stop, self.dtls.stop, self.ice.stop):
            with contextlib.suppress(Exception):
                await stage()

    @property
    def remote_address(self) -> tuple[str, int] | None:
        pairs = cast(dict[int, Any], getattr(self.ice_agent, "_nominated", {}))
        pair = pairs.get(1)
        return None if pair is None else cast(tuple[str, int], pair.remote_addr)


__all__ = [
    "AiortcLink",
    "DialerIce",
    "EngineError",
    "RemoteDescription",
    "SharedSocketIce",
    "certificate_for",
    "route_source",
]
