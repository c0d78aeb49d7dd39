"""KPS settings: every limit and timer, read from ``Options`` with ``kps.``-prefixed overrides.

One frozen value object so the sans-IO parts get plain numbers and a bad setting fails once, at
dial or listen time, with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..options import Options, read_settings, setting_value

PREFIX = "kps."


@dataclass(frozen=True)
class KpsSettings:
    """Limits and timers of KPS connections (the defaults follow KPS and quic-go)."""

    #: seconds without any packet before a connection fails with ``timeout`` (quic-go's 30 s)
    idle_timeout: float = 30.0
    #: seconds between PINGs on an otherwise quiet connection (0 = no keep-alive); idle
    #: connections stay up by default (see ``ping_interval``)
    keepalive: float = 10.0
    #: seconds a handshake may take (dialer and listener)
    handshake_timeout: float = 5.0
    #: listener: most connections (including handshakes in progress) at once
    max_connections: int = 1024
    #: streams the peer may have open at once (QUIC ``initial_max_streams_bidi``)
    max_streams: int = 100
    #: per-stream receive window advertised to the peer, bytes
    stream_window: int = 1 << 20
    #: per-connection budget of received bytes the application has not read yet
    connection_window: int = 8 << 20
    #: a writer waits while this many bytes of its stream are queued and unsent
    send_buffer: int = 1 << 20
    #: ... or while this many bytes of all its connection's streams are (so a peer that reads
    #: nothing holds at most this much per connection, however many streams are written to)
    connection_send_buffer: int = 8 << 20
    #: datagrams held for ``receive_datagram`` before the oldest is dropped
    datagram_queue: int = 256
    #: initial UDP payload size in bytes (a dialer probes for more)
    max_packet_size: int = 1280
    #: most seconds a graceful close waits for queued stream data to be acknowledged (it returns
    #: as soon as everything is; then CONNECTION_CLOSE is sent)
    close_timeout: float = 10.0
    #: listener: refusals (CONNECTION_REFUSED answers) sent per second at most
    refusals_per_second: float = 20.0
    #: seconds assumed for the round trip before one is measured (sets the first PTO)
    initial_rtt: float = 0.1
    #: listener: handshakes in flight before a new client must validate its address with a
    #: stateless Retry (0 = always; a Retry costs the client one more round trip)
    retry_threshold: int = 16
    #: listener: received-but-unread bytes all connections together may hold; each new
    #: connection's window is a share of it (see ``budget``)
    receive_budget: int = 256 << 20
    #: listener: no connection's receive window is made smaller than this by the budget
    min_connection_window: int = 256 << 10

    @property
    def ping_interval(self) -> float:
        """Seconds between keep-alive PINGs: ``keepalive``, but at least three per
        ``idle_timeout`` so a shortened idle timeout never outruns it (0 = none)."""
        if self.keepalive <= 0:
            return 0.0
        return min(self.keepalive, self.idle_timeout / 3)

    @classmethod
    def from_options(cls, options: Options) -> KpsSettings:
        """Defaults, then the shared ``Options`` fields, then ``options.extra['kps.*']``."""
        values: dict[str, Any] = {
            "handshake_timeout": options.handshake_timeout,
            "max_connections": options.max_connections,
        }
        known = {f.name: f for f in fields(cls)}
        values.update(read_settings(options, PREFIX, known))
        return cls(**{k: coerce_number(k, known[k].type, v) for k, v in values.items()})

    def __post_init__(self) -> None:
        positive = (
            "idle_timeout",
            "handshake_timeout",
            "initial_rtt",
            "max_connections",
            "max_streams",
            "stream_window",
            "connection_window",
            "send_buffer",
            "connection_send_buffer",
            "datagram_queue",
            "receive_budget",
            "min_connection_window",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"kps.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("keepalive", "close_timeout", "refusals_per_second", "retry_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"kps.{name} must not be negative, got {getattr(self, name)!r}")
        if not 1200 <= self.max_packet_size <= 65527:
            raise ValueError(f"kps.max_packet_size must be 1200..65527, got {self.max_packet_size}")
        if self.max_streams > 1 << 60:
            raise ValueError("kps.max_streams is above QUIC's limit of 2^60")


def coerce_number(name: str, kind: Any, value: Any, prefix: str = PREFIX) -> Any:
    """``value`` as a ``prefix + name`` setting of type ``kind`` (WebTransport shares this)."""
    return setting_value(prefix + name, kind, value)
