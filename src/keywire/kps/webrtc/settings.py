"""WebRTC settings, read from ``Options.extra['webrtc.<name>']`` (no aiortc import here).

Kept apart from the listener so a KPS dialer can check ``webrtc.dial`` without loading the
WebRTC engine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ...options import Options, read_settings, setting_value
from .ice import GateSettings
from .wire import WireSettings

PREFIX = "webrtc."


@dataclass(frozen=True)
class WebRTCSettings:
    """Listener and dialer settings; ``Options.extra['webrtc.<name>']`` overrides each."""

    #: concurrent WebRTC peers (handshaking or open) per listener
    max_peers: int = 256
    #: new-peer STUN checks per second per source IP, and the burst allowed
    stun_rate: float = 50.0
    stun_burst: int = 100
    #: seconds from the first STUN check (or the dial) to an open connection (ICE+DTLS+HELLO)
    handshake_timeout: float = 15.0
    #: seconds without a packet from the peer before the connection closes with timeout
    #: (0 = never; live peers send ICE consent checks every ~5 s)
    idle_timeout: float = 30.0
    #: dialer: reach ``kps:`` addresses over WebRTC instead of QUIC (KPS Go's ``DialWebRTC``)
    dial: bool = False
    #: dialer: ICE credential scheme, 1 = KPS wire v1 (every KPS server), 2 = keywire wire v2
    #: (keywire servers; what browsers use); a listener always accepts both
    wire_version: int = 1
    #: listener: serve browsers over WebRTC on the kps listener's UDP port (KPS's default)
    serve: bool = True
    #: receive windows and stream limit granted to the peer (KPS defaults)
    stream_window: int = 1 << 20
    connection_window: int = 8 << 20
    max_streams: int = 100
    #: listener: peers that have not finished DTLS, at most; a newcomer evicts one of them
    max_pending: int = 64
    #: listener: seconds a peer may take from its ClientHello to a finished DTLS handshake
    pending_timeout: float = 5.0
    #: listener: the part of ``max_peers`` one source (IPv4 address, IPv6 /64) may hold
    source_share: float = 0.25

    def __post_init__(self) -> None:
        for name in (
            "max_peers",
            "stun_burst",
            "stream_window",
            "connection_window",
            "max_streams",
            "max_pending",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"webrtc.{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("stun_rate", "handshake_timeout", "pending_timeout"):
            if not getattr(self, name) > 0:  # (NaN too)
                raise ValueError(f"webrtc.{name} must be positive, got {getattr(self, name)!r}")
        if not 0 < self.source_share <= 1:
            raise ValueError(f"webrtc.source_share must be in (0, 1], got {self.source_share!r}")
        if self.wire_version not in (1, 2):
            raise ValueError(f"webrtc.wire_version must be 1 or 2, got {self.wire_version}")
        if self.idle_timeout < 0:
            raise ValueError("webrtc.idle_timeout must be 0 (off) or positive")

    @classmethod
    def from_options(cls, options: Options | None) -> WebRTCSettings:
        if options is None:
            return cls()
        values: dict[str, Any] = {}
        kinds = {f.name: f.type for f in fields(cls)}
        for name, value in read_settings(options, PREFIX, kinds).items():
            values[name] = setting_value(PREFIX + name, kinds[name], value)
        return cls(**values)

    @property
    def wire(self) -> WireSettings:
        return WireSettings(
            initial_max_stream_data=self.stream_window,
            initial_max_data=self.connection_window,
            initial_max_streams=self.max_streams,
            hello_timeout=self.handshake_timeout,
            idle_timeout=self.idle_timeout,
        )

    @property
    def gate(self) -> GateSettings:
        return GateSettings(
            max_peers=self.max_peers,
            rate=self.stun_rate,
            burst=self.stun_burst,
            max_pending=self.max_pending,
            pending_timeout=self.pending_timeout,
            source_share=self.source_share,
        )
