"""The WebTransport listener: KPS's QUIC listener machinery with WebTransport connections.

Routing, admission, Retry, receive budgets and memory reclaim are ``KpsListener``'s; this
subclass only changes what each connection is (``WebTransportQuic``) and which certificate it
presents (the ``CertStore``'s current one, looked up per connection so a rotation takes effect
without a restart).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from qh3 import tls
from qh3._hazmat import Certificate
from qh3.quic.configuration import QuicConfiguration

from ..identity import Identity
from ..kps.quic.configuration import GatedQuicConnection, server_configuration
from ..kps.quic.connection import KpsConnection
from ..kps.quic.listener import KpsListener, OnConnection
from ..kps.settings import KpsSettings
from .adapter import CLOSE_LINGER, WebTransportQuic, WebTransportSession
from .binding import encode_record
from .certs import CertStore


class WebTransportListener(KpsListener):
    """Serves one WebTransport session per QUIC connection on its own UDP port."""

    session_class = WebTransportSession

    def __init__(
        self,
        identity: Identity,
        settings: KpsSettings,
        on_connection: OnConnection,
        certs: CertStore | None = None,
        *,
        close_linger: float = CLOSE_LINGER,
    ) -> None:
        super().__init__(identity, settings, on_connection)
        self.close_linger = close_linger
        self.certs = certs if certs is not None else CertStore(identity)
        self.certs.pair()  # generate (or load) now: the announced hashes must exist
        self._wt_configs: dict[tuple[int, bytes], QuicConfiguration] = {}

    def _config_for(self, settings: KpsSettings) -> QuicConfiguration:
        current = self.certs.current(dt.datetime.now(dt.UTC))
        key = (settings.connection_window, current.cert_digest)
        config = self._wt_configs.get(key)
        if config is None:
            config = server_configuration(self.identity, settings)
            config.certificate = Certificate(current.certificate_der)
            config.private_key = tls.load_pem_private_key(current.private_key_pem)
            self._wt_configs = {
                k: v for k, v in self._wt_configs.items() if k[1] == current.cert_digest
            }
            self._wt_configs[key] = config
        return config

    def _new_quic(self, **options: Any) -> GatedQuicConnection:
        record = encode_record(self.certs.bindings())
        return WebTransportQuic(record=record, close_linger=self.close_linger, **options)

    def _on_finished(self, conn: KpsConnection) -> None:
        super()._on_finished(conn)
        quic = conn.session.quic
        if isinstance(quic, WebTransportQuic):
            quic.drop_references()
