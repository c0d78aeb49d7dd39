"""qh3 adapted to KPS: configurations, the in-handshake certhash pin, and receive-credit gating.

What qh3 2.1 does not offer through its public API, each done here in one place:

* **Receive windows tied to reading.** qh3's native core grants flow-control credit when a
  ``StreamDataReceived`` event is *popped* from the core (``poll_event`` consumes credit), and its
  facade pops every event right after each packet. ``GatedQuicConnection`` stops that popping
  while the application holds ``connection_window`` unread bytes, so connection-level credit
  advances only as the application reads (the per-stream window still advances on delivery; see
  docs/kps.md). Packets are still decrypted and acknowledged while gated.
* **A configurable stream limit.** The facade hard-codes ``initial_max_streams_bidi = 100`` in
  both the native core and the transport parameters; ``max_streams`` replaces it in both.
* **A constant-time pin.** ``assert_fingerprint`` compares with ``!=``; the client also wraps the
  TLS CertificateVerify step with an ``hmac.compare_digest`` check and records what the server
  presented, so a mismatch can name both hashes. Both run before the client's Finished, i.e.
  before any application data.
* **A sender without per-packet logging hooks** (``datagrams_to_send``).
* **No TLS state once established** (listener, ``release_tls``): qh3 keeps its TLS bridge
  (key shares, the certificate chain, transcript, five queues: ~8 KB of Python objects) for the
  connection's life; a server needs none of it after its handshake, so it is replaced by
  ``_SpentTls`` (issue 17: an idle connection's memory).

The dialer keeps qh3's X25519MLKEM768 + X25519 key shares: offering X25519 alone would save
about 0.1 ms of CPU per side, but a listener answering a plain X25519 ClientHello hits qh3
2.1's first-flight packing failure (see ``KpsSession.datagrams_to_send``) and its refusals
reach the client without a CRYPTO frame, so the hybrid share is also the faster handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Callable
from typing import Any

import qh3.quic.connection as _qh3_connection
from qh3 import tls
from qh3._hazmat import Buffer, Certificate
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.packet import QuicErrorCode, pull_quic_transport_parameters
from qh3.quic.tls_bridge import QuicTlsBridgeError

from ...identity import Identity
from ..settings import KpsSettings
from . import keyschedule, tlsblocks, transportparams
from .transportparams import push_quic_transport_parameters

keyschedule.install()
tlsblocks.install()
transportparams.install()

#: KPS's ALPN: looks like HTTP/3 on the wire, names no product
ALPN = "h3"
#: RFC 9221 max_datagram_frame_size we advertise
MAX_DATAGRAM_FRAME = 65536
#: local connection ids are this long (the dispatcher reads short headers with it)
CID_LENGTH = 8
#: connection ids a listener accepts from each client (qh3: 8; quic-go: 4; RFC 9000 minimum 2)
SERVER_CID_LIMIT = 2

# positions in QuicConnectionCore's constructor (qh3 2.1 ``_hazmat.pyi``)
_CORE_ARGS = 28
_CORE_MAX_STREAMS_BIDI = 21
_QH3_MAX_STREAMS_BIDI = 100


class _QuietNativeClose(logging.Filter):
    """qh3 logs every peer close at WARNING; a close is normal for us and is reported as an error
    object, so those records are dropped rather than printed on every CLI run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Native peer close", "Native protocol error"))


logging.getLogger("quic").addFilter(_QuietNativeClose())


def _common(settings: KpsSettings) -> dict[str, Any]:
    """What both ends configure alike: ALPN, connection ids, windows, datagrams, timers."""
    return {
        "alpn_protocols": [ALPN],
        "connection_id_length": CID_LENGTH,
        "idle_timeout": settings.idle_timeout,
        "max_data": settings.connection_window,
        "max_stream_data": settings.stream_window,
        "max_datagram_frame_size": MAX_DATAGRAM_FRAME,
        "max_datagram_size": settings.max_packet_size,
        "initial_rtt": settings.initial_rtt,
    }


def server_configuration(identity: Identity, settings: KpsSettings) -> QuicConfiguration:
    """The listener's configuration: the identity's certificate, ALPN h3, datagrams on."""
    config = QuicConfiguration(
        is_client=False, active_connection_id_limit=SERVER_CID_LIMIT, **_common(settings)
    )
    config.certificate = Certificate(identity.certificate_der)
    config.private_key = tls.load_pem_private_key(identity.private_key_pem)
    return config


def client_configuration(pin: bytes, settings: KpsSettings) -> QuicConfiguration:
    """The dialer's configuration: no CA, no SNI, the server checked only by ``pin``.

    Built per dial (29 µs): a cached one would be shared and mutable (qh3's ``connect`` sets
    ``server_name`` on what it is given), and hashing the settings costs half of that anyway."""
    return QuicConfiguration(
        is_client=True,
        verify_mode=ssl.CERT_NONE,
        assert_fingerprint=pin.hex(),
        server_name=None,
        **_common(settings),
    )


def _core_with_stream_limit(native: Callable[..., Any], limit: int) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) == _CORE_ARGS:
            args = (*args[:_CORE_MAX_STREAMS_BIDI], limit, *args[_CORE_MAX_STREAMS_BIDI + 1 :])
        return native(*args)

    return build


def _advertise_stream_limit(bridge: Any, limit: int) -> None:
    """Make the transport parameters say ``initial_max_streams_bidi = limit`` (qh3: 100)."""
    original = bridge.serialize_transport_parameters

    def serialize() -> bytes:
        params = pull_quic_transport_parameters(Buffer(data=original()))
        params.initial_max_streams_bidi = limit
        out = Buffer(capacity=4096)
        push_quic_transport_parameters(out, params)
        return bytes(out.data)

    bridge.serialize_transport_parameters = serialize
    bridge.tls.handshake_extensions = [(tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS, serialize())]


class _SpentTls:
    """What stands in for a server's TLS bridge after the handshake. Handshake keys are gone by
    then (a server's handshake is confirmed when it completes), so CRYPTO can only arrive in
    1-RTT packets, where a TLS 1.3 server accepts no message over QUIC: refused like qh3's own
    context would (unexpected message)."""

    __slots__ = ("version",)
    handshake_complete = True
    remote_transport_parameters = None
    remote_initial_source_connection_id = None
    peer_certificate = None
    peer_certificate_chain: tuple[()] = ()
    cipher_suite = None
    ech_accepted = False
    ech_retry_configs = None
    tls = None

    def __init__(self, version: int) -> None:
        self.version = version

    def receive_crypto(self, *args: Any, **kwargs: Any) -> None:
        raise QuicTlsBridgeError(QuicErrorCode.PROTOCOL_VIOLATION, "CRYPTO after the handshake")


class _EventQueue(list[Any]):
    """qh3's event queue (it calls ``append`` and ``popleft``) as a list: an empty deque is
    760 bytes, an empty list 56, and the queue is emptied after every datagram burst."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class GatedQuicConnection(QuicConnection):
    """A qh3 connection whose events (and so its receive credit) can be held back."""

    #: a server drops its TLS state once the handshake is complete (see ``_SpentTls``)
    release_tls = False

    # Slots for our attributes and for some that qh3's ``__init__`` always sets: a slot on a
    # subclass takes the parent's assignment too. The instance dict then keeps fewer than 30
    # keys, the most CPython 3.12 stores in its compact shared-key form; qh3's ~44 attributes
    # in a dict cost 1.6 KB per connection (issue 17: an idle connection's memory).
    __slots__ = (
        "_configuration",
        "_connect_called",
        "_early_data_attempted",
        "_is_client",
        "_original_destination_connection_id",
        "_peer_token",
        "_pre_handshake_state_replayed",
        "_remote_addr",
        "_remote_max_stream_data_bidi_remote",
        "_retry_count",
        "_retry_source_connection_id",
        "_session_ticket_fetcher",
        "_session_ticket_handler",
        "_version_negotiated",
        "_zero_rtt_resolved",
        "hold_events",
        "max_streams",
        "pin",
        "presented_digest",
    )

    def __init__(self, *, max_streams: int = 100, pin: bytes | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._events = _EventQueue(self._events)  # type: ignore[assignment]
        self.hold_events = False
        self.max_streams = max_streams
        self.pin = pin
        #: SHA-256 of the certificate the server presented (client side, once seen)
        self.presented_digest: bytes | None = None

    # -- TLS state ------------------------------------------------------------------------------
    def _drain_tls(self) -> None:
        super()._drain_tls()
        bridge = self._tls
        if (
            self.release_tls
            and not self._is_client
            and self._handshake_complete
            and self._transport_parameters_applied
            and bridge is not None
            and not isinstance(bridge, _SpentTls)
        ):
            # everything the bridge produced (secrets, CRYPTO, events) was drained just now,
            # and the applied transport parameters were only kept to compare with its own
            self._tls = _SpentTls(bridge.version)  # type: ignore[assignment]
            self._applied_transport_parameters = None

    # -- receive credit -----------------------------------------------------------------------
    def _drain_core(self) -> None:
        core = self._core
        if self.hold_events and core is not None and core.state == "connected":
            return
        super()._drain_core()

    def release_events(self) -> None:
        """Stop holding; pop what the core queued (granting the credit the reads freed)."""
        self.hold_events = False
        if self._core is not None:
            super()._drain_core()

    # -- sending --------------------------------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """qh3's loop without its per-packet logging hooks, which parse every packet's header
        again even with no logger configured (a tenth of a busy sender's CPU)."""
        core = self._core
        if core is None or self._quic_logger is not None:
            return super().datagrams_to_send(now)
        out: list[tuple[bytes, Any]] = []
        poll = core.poll_transmit
        try:
            while (transmit := poll(now)) is not None:
                out.append((transmit[0], transmit[1]))
        except RuntimeError as exc:
            raise QuicConnectionError(QuicErrorCode.INTERNAL_ERROR, None, str(exc)) from exc
        return out

    @property
    def established(self) -> bool:
        return self._core is not None and self._core.state == "connected"

    # -- stream limit -------------------------------------------------------------------------
    def _create_core(self, remote_addr: Any, initial_dcid: bytes, now: float) -> None:
        # the facade builds its core from this module global; swap it for the one call
        module: Any = _qh3_connection
        native = module.QuicConnectionCore
        module.QuicConnectionCore = _core_with_stream_limit(native, self.max_streams)
        try:
            super()._create_core(remote_addr, initial_dcid, now)
        finally:
            module.QuicConnectionCore = native

    # -- certhash pin -------------------------------------------------------------------------
    def _create_tls(self, remote_source_cid: bytes | None) -> Any:
        bridge = super()._create_tls(remote_source_cid)
        if self.pin is not None:
            self._wrap_certificate_verify(bridge.tls, self.pin)
        if self.max_streams != _QH3_MAX_STREAMS_BIDI:
            _advertise_stream_limit(bridge, self.max_streams)
        return bridge

    def _wrap_certificate_verify(self, context: Any, pin: bytes) -> None:
        original = getattr(context, "_client_handle_certificate_verify", None)
        if original is None:  # a qh3 without the hook: assert_fingerprint still enforces
            return

        def check_pin(input_buf: Any) -> None:
            certificate = getattr(context, "_peer_certificate", None)
            if certificate is not None:
                presented = hashlib.sha256(certificate.public_bytes()).digest()
                self.presented_digest = presented
                if not hmac.compare_digest(presented, pin):
                    raise tls.AlertBadCertificate("certificate does not match the pinned certhash")
            original(input_buf)

        context._client_handle_certificate_verify = check_pin

    def peer_certificate_digest(self) -> bytes | None:
        """SHA-256 of the server's certificate DER, if the handshake got that far."""
        if self.presented_digest is not None:
            return self.presented_digest
        cert = self.get_peercert()
        return None if cert is None else hashlib.sha256(cert.public_bytes()).digest()
