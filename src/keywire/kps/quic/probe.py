"""Probe resistance: a KPS listener's connections behave as an HTTP/3 server to HTTP/3 clients.

KPS negotiates ALPN ``h3`` so that nothing on the wire names it; an active prober that speaks
HTTP/3 must then see an ordinary HTTP/3 server, not a stream echo. The model (docs/kps.md,
"Probe resistance"):

* **Every** server connection opens its HTTP/3 control stream with SETTINGS (and the QPACK
  encoder and decoder streams) as soon as the handshake completes, as RFC 9114 §6.2.1 requires of
  any HTTP/3 server. The bytes are the ones qh3's ``H3Connection`` sends (recorded once per
  process); the ``H3Connection`` itself (its QPACK state and tables, ~1.4 KB a connection) is
  only made for a peer that turns out to speak HTTP/3, and then adopts those three streams
  (issue 17: idle memory). KPS streams are bidirectional only, so a KPS client ignores these
  three unidirectional streams (keywire's dialer answers them with STOP_SENDING, quic-go and
  quinn leave them unaccepted).
* A connection is an **HTTP/3 client** once the peer opens a unidirectional stream: HTTP/3 clients
  must open a control stream, KPS clients never open one (KPS has no unidirectional streams).
  From then on every new bidirectional stream is an HTTP/3 request, answered by qh3's own HTTP/3
  stack with ``404`` (``content-length: 0``) and never shown to the application. Bidirectional
  streams the peer opened before that stay KPS streams.
* On a KPS connection, nothing changes: the client's bidirectional streams reach the application
  byte for byte, whatever their first bytes are (no content sniffing, so KPS wire v1 holds).

This module filters qh3's events between the QUIC connection and ``KpsSession``: the session
never sees the HTTP/3 streams.
"""

from __future__ import annotations

import logging
import weakref
from types import SimpleNamespace
from typing import Any

from qh3.h3.connection import H3Connection, ProtocolError
from qh3.h3.events import HeadersReceived
from qh3.quic import events as qe

from .configuration import GatedQuicConnection

log = logging.getLogger("keywire.kps")

#: the answer to any HTTP/3 request: the resource does not exist (no product name, no body)
RESPONSE_HEADERS = [(b":status", b"404"), (b"content-length", b"0")]
#: RFC 9114 §8.1 H3_NO_ERROR, for STOP_SENDING on a request body we will not read
H3_NO_ERROR = 0x100


class _Recorder:
    """Stands in for a server's QUIC connection while an ``H3Connection`` opens its streams."""

    _quic_logger = None

    def __init__(self) -> None:
        self.configuration = SimpleNamespace(is_client=False)
        self.sent: list[tuple[int, bytes]] = []
        self._next = 3  # the first server-initiated unidirectional stream

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        assert is_unidirectional
        stream_id, self._next = self._next, self._next + 4
        return stream_id

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        assert not end_stream
        self.sent.append((stream_id, bytes(data)))


_opening: list[bytes] | None = None


def h3_opening() -> list[bytes]:
    """What qh3's ``H3Connection`` writes on its control, QPACK encoder and decoder streams when
    it is made on a server (stream type, then SETTINGS on the control stream), in that order."""
    global _opening
    if _opening is None:
        recorder = _Recorder()
        H3Connection(recorder)  # type: ignore[arg-type]
        streams: dict[int, bytes] = {}
        for stream_id, data in recorder.sent:
            streams[stream_id] = streams.get(stream_id, b"") + data
        _opening = [streams[stream_id] for stream_id in sorted(streams)]
    return _opening


class _AdoptingH3Connection(H3Connection):
    """An ``H3Connection`` whose three streams were opened (and SETTINGS sent) already."""

    def __init__(self, quic: Any, streams: tuple[int, int, int]) -> None:
        self._adopted = streams
        super().__init__(quic)

    def _init_connection(self) -> None:
        control, encoder, decoder = self._adopted
        self._local_control_stream_id = control
        self._sent_settings = self._get_local_settings()
        self._local_encoder_stream_id = encoder
        self._local_decoder_stream_id = decoder


class ProbeAnsweringQuicConnection(GatedQuicConnection):
    """A listener's QUIC connection that opens HTTP/3's streams and answers HTTP/3 requests."""

    release_tls = True
    __slots__ = ("_last_kps_stream", "h3", "h3_streams", "is_http3", "requests_answered")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.h3: H3Connection | None = None
        #: our control, QPACK encoder and decoder streams, once opened
        self.h3_streams: tuple[int, int, int] | None = None
        #: the peer opened a unidirectional stream: it is an HTTP/3 client, not a KPS client
        self.is_http3 = False
        #: HTTP/3 requests answered with 404
        self.requests_answered = 0
        # highest peer bidirectional stream passed to the session (those stay KPS streams)
        self._last_kps_stream = -1

    def next_event(self) -> qe.QuicEvent | None:
        while True:
            event = super().next_event()
            if event is None or not self._absorb(event):
                return event

    def drop_references(self) -> None:
        """The connection has ended: drop what ties it in cycles (its HTTP/3 state, and the
        callback by which qh3's TLS bridge points back here), so reference counting frees it."""
        self.h3 = None
        bridge = self._tls
        if bridge is not None and hasattr(bridge, "_version_change_handler"):
            bridge._version_change_handler = None

    # -- internals ------------------------------------------------------------------------------
    def _open_h3_streams(self) -> None:
        """What an HTTP/3 server does at once (RFC 9114 §6.2.1), without HTTP/3 state."""
        if self.h3_streams is not None or self._is_client:
            return
        try:
            ids = []
            for data in h3_opening():
                stream_id = self.get_next_available_stream_id(is_unidirectional=True)
                self.send_stream_data(stream_id, data)
                ids.append(stream_id)
            self.h3_streams = (ids[0], ids[1], ids[2])
        except Exception as exc:  # the peer allows no unidirectional stream, or similar
            log.debug("KPS: HTTP/3 control stream not opened: %s", exc)

    def _start_h3(self) -> None:
        if self.h3 is None and self.h3_streams is not None:
            # a proxy, not a reference: no quic <-> h3 cycle keeps a closed connection's
            # buffers alive until the cyclic collector happens to run
            self.h3 = _AdoptingH3Connection(weakref.proxy(self), self.h3_streams)

    def _absorb(self, event: qe.QuicEvent) -> bool:
        """True if ``event`` belongs to HTTP/3 (handled here), False to pass it to KPS."""
        if type(event) is qe.StreamDataReceived and not event.stream_id & 3 and not self.is_http3:
            # the per-packet case: data on a client-opened bidirectional stream from a KPS
            # client (the general branch below, without its checks)
            if event.stream_id > self._last_kps_stream:
                self._last_kps_stream = event.stream_id
            return False
        if isinstance(event, qe.HandshakeCompleted):
            self._open_h3_streams()
            return False
        if not isinstance(event, (qe.StreamDataReceived, qe.StreamReset, qe.StopSendingReceived)):
            return False
        stream_id = event.stream_id
        unidirectional = bool(stream_id & 2)
        ours = bool(stream_id & 1)  # server-initiated
        if unidirectional and not ours:
            self.is_http3 = True
        elif unidirectional:
            # our own HTTP/3 streams: a KPS client's STOP_SENDING on them means nothing
            if not self.is_http3:
                return True
        elif ours or not self.is_http3 or stream_id <= self._last_kps_stream:
            if not ours:
                self._last_kps_stream = max(self._last_kps_stream, stream_id)
            return False
        self._start_h3()
        if self.h3 is not None:
            self._feed(event)
        return True

    def _feed(self, event: qe.QuicEvent) -> None:
        assert self.h3 is not None
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                try:
                    self.h3.send_headers(h3_event.stream_id, RESPONSE_HEADERS, end_stream=True)
                    self.requests_answered += 1
                    if not h3_event.stream_ended:
                        # the answer does not depend on a request body: stop it (RFC 9114 §4.1)
                        self.stop_stream(h3_event.stream_id, H3_NO_ERROR)
                except (ProtocolError, AssertionError, ValueError) as exc:
                    log.debug("KPS: HTTP/3 answer on stream %d failed: %s", h3_event.stream_id, exc)
