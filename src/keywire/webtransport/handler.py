"""The ``webtransport`` chain handler: dials and listens on ``webtransport:`` alternatives."""

from __future__ import annotations

from ..address import Alternative, Scope, format_alternative
from ..kps.quic.connection import KpsConnection
from ..netinfo import addresses_for_scope
from ..options import Options
from ..plugin import ChainHandler, ConnectionHandler, Listening
from ..stream import Connection
from .address import NAME, dial_target, listen_target, wt_section
from .dialer import dial_webtransport
from .listener import WebTransportListener
from .settings import WtSettings


class WebTransportListening(Listening):
    """A running listener: announces ``webtransport:HOST:PORT:KEY:CURRENT:NEXT`` per scope."""

    def __init__(self, listener: WebTransportListener, bind_host: str) -> None:
        self.listener = listener
        self.bind_host = bind_host

    @property
    def port(self) -> int:
        return self.listener.port

    def certhashes(self) -> tuple[str, ...]:
        current, following = self.listener.certs.pair()
        return current.certhash, following.certhash

    def announce(self, scope: Scope) -> list[Alternative]:
        key = self.listener.identity.public_key
        return [
            Alternative((wt_section(host, self.port, key, self.certhashes()),))
            for host in addresses_for_scope(self.bind_host, scope)
        ]

    async def close(self) -> None:
        await self.listener.close()


class WebTransportHandler(ChainHandler):
    """WebTransport over HTTP/3 (qh3) with certificate hashes and the identity binding."""

    name = NAME

    def claims(self, alt: Alternative) -> bool:
        return len(alt.sections) == 1 and alt.transport.name == NAME

    async def dial(self, alt: Alternative, options: Options) -> Connection:
        target = dial_target(alt.transport)
        wt = WtSettings.from_options(options)
        return await dial_webtransport(
            target, wt.quic, address=format_alternative(alt), close_linger=wt.close_linger
        )

    async def listen(
        self, alt: Alternative, options: Options, on_connection: ConnectionHandler
    ) -> Listening:
        host, port = listen_target(alt.transport)
        identity = options.need_identity()
        wt = WtSettings.from_options(options)
        listening: WebTransportListening | None = None

        async def accepted(conn: KpsConnection) -> None:
            if listening is not None:
                hosts = addresses_for_scope(host, Scope.DEVICE) or [host]
                section = wt_section(
                    hosts[0], listener.port, identity.public_key, listening.certhashes()
                )
                conn.address = Alternative((section,))
            await on_connection(conn)

        listener = WebTransportListener(identity, wt.quic, accepted, close_linger=wt.close_linger)
        await listener.start(host, port)
        listening = WebTransportListening(listener, host)
        return listening
