"""Dialing a WebTransport address from Python: QUIC pinned to the address's certificate hashes,
an HTTP/3 extended CONNECT, and the identity binding checked before any stream is handed out."""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from typing import Any

from qh3 import tls
from qh3.quic.configuration import QuicConfiguration

from ..errors import PinMismatch
from ..identity import encode_certhash
from ..kps.quic.configuration import _common
from ..kps.quic.connection import KpsConnection
from ..kps.quic.dialer import connect_client
from ..kps.settings import KpsSettings
from ..kps.udp import resolve
from ..stream import RemoteIdentity
from .adapter import CLOSE_LINGER, WebTransportQuic, WebTransportSession
from .address import WtTarget
from .binding import verify_record
from .wire import PATH


class _PinnedQuic(WebTransportQuic):
    """Accepts the server's certificate iff its SHA-256 is one of the address's hashes."""

    def __init__(self, *, pins: list[bytes], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pins = pins

    def _create_tls(self, remote_source_cid: bytes | None) -> Any:
        bridge = super()._create_tls(remote_source_cid)
        context = bridge.tls
        original = getattr(context, "_client_handle_certificate_verify", None)
        if original is not None:

            def check_pins(input_buf: Any) -> None:
                certificate = getattr(context, "_peer_certificate", None)
                if certificate is not None:
                    presented = hashlib.sha256(certificate.public_bytes()).digest()
                    self.presented_digest = presented
                    if not any(hmac.compare_digest(presented, p) for p in self.pins):
                        raise tls.AlertBadCertificate("certificate matches no pinned hash")
                original(input_buf)

            context._client_handle_certificate_verify = check_pins
        return bridge


async def dial_webtransport(
    target: WtTarget,
    settings: KpsSettings,
    *,
    address: str = "",
    path: str = PATH,
    close_linger: float = CLOSE_LINGER,
) -> KpsConnection:
    """Connect to ``target``; raise ``PinMismatch`` (certificate not pinned), ``BindingError``
    (certificate not vouched for by the address's identity key), ``TimeoutError`` or
    ``HandshakeError``."""
    ip, port = await resolve(target.host, target.port)
    quic: _PinnedQuic | None = None

    def verify(record: bytes) -> None:
        assert quic is not None
        verify_record(
            record,
            target.public_key,
            target.digests,
            presented=quic.presented_digest,
            now=time.time(),
        )

    config = QuicConfiguration(
        is_client=True, verify_mode=ssl.CERT_NONE, server_name=None, **_common(settings)
    )
    host_text = f"[{ip}]" if ":" in ip else ip
    quic = _PinnedQuic(
        configuration=config,
        max_streams=settings.max_streams,
        pins=list(target.digests),
        authority=f"{host_text}:{port}",
        path=path,
        verify=verify,
        close_linger=close_linger,
    )
    session = WebTransportSession(
        quic, connection_window=settings.connection_window, max_backlog=settings.max_streams
    )

    def failure() -> Exception | None:
        assert quic is not None
        presented = quic.presented_digest
        if presented is not None and presented not in target.digests:
            return PinMismatch(target.certhashes[0], encode_certhash(presented))
        if quic.refusal is not None:
            return type(quic.refusal)(str(quic.refusal))
        return None

    remote = RemoteIdentity(public_key=target.public_key, certhash=target.certhashes[0])
    return await connect_client(
        session,
        settings,
        (ip, port),
        address=address,
        remote=remote,
        failure=failure,
        name="webtransport",
    )
