"""The ``kps`` chain handler: dials and listens on alternatives made of one ``kps`` section.

Accepted forms: ``kps:HOST:PORT:CERTHASH``, the bare ``IP:PORT:CERTHASH`` and
``[V6]:PORT:CERTHASH`` (the address parser marks them ``bare``), and for listening
``kps:HOST:PORT`` with port 0 allowed (the certhash comes from the identity).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..address import Alternative, Scope, Section, format_alternative
from ..errors import AddressError
from ..netinfo import addresses_for_scope
from ..options import Options
from ..plugin import ChainHandler, ConnectionHandler, Listening
from ..stream import Connection
from .quic.connection import KpsConnection
from .quic.dialer import dial
from .quic.listener import KpsListener
from .settings import KpsSettings
from .webrtc.settings import WebRTCSettings

if TYPE_CHECKING:
    from .webrtc.server import WebRTCListener


def host_of(parts: tuple[str, ...]) -> str:
    """The host of an address whose IPv6 literal was split at its colons (WebTransport too)."""
    host = ":".join(parts)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return "::" if host == ":" else host


def port_of(section: Section, text: str, *, allow_zero: bool, at: int | None = None) -> int:
    """``text`` as a port, else an ``AddressError`` pointing at ``at`` (default: ``text``)."""
    low = 0 if allow_zero else 1
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not low <= int(text) <= 65535:
        where = len(str(section)) - len(text) if at is None else at
        raise AddressError(str(section), where, f"a decimal port from {low} to 65535")
    return int(text)


def dial_target(section: Section) -> tuple[str, int, str]:
    """``(host, port, certhash)`` of a dialable kps section."""
    if len(section.args) < 3:
        raise AddressError(str(section), len(section.name), "':HOST:PORT:CERTHASH' after 'kps'")
    return (
        host_of(section.args[:-2]),
        port_of(section, section.args[-2], allow_zero=False),
        section.args[-1],
    )


def listen_target(section: Section) -> tuple[str, int, str | None]:
    """``(host, port, certhash or None)`` of a listen spec (port 0 picks one)."""
    args = section.args
    if len(args) >= 3 and args[-1].startswith("u") and len(args[-1]) == 47:
        return host_of(args[:-2]), port_of(section, args[-2], allow_zero=True), args[-1]
    if len(args) < 2:
        raise AddressError(str(section), len(section.name), "':HOST:PORT' after 'kps'")
    return host_of(args[:-1]), port_of(section, args[-1], allow_zero=True), None


def kps_section(host: str, port: int, certhash: str) -> Section:
    """``kps:HOST:PORT:CERTHASH``, an IPv6 host written bare as multiserver writes hosts."""
    return Section("kps", (*host.split(":"), str(port), certhash))


class KpsListening(Listening):
    """A running KPS listener as the server sees it: QUIC and WebRTC on one UDP socket."""

    def __init__(
        self, listener: KpsListener, bind_host: str, webrtc: WebRTCListener | None = None
    ) -> None:
        self.listener = listener
        self.bind_host = bind_host
        self.webrtc = webrtc

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def certhash(self) -> str:
        return self.listener.identity.certhash

    def announce(self, scope: Scope) -> list[Alternative]:
        return [
            Alternative((kps_section(host, self.port, self.certhash),))
            for host in addresses_for_scope(self.bind_host, scope)
        ]

    async def close(self) -> None:
        if self.webrtc is not None:
            await self.webrtc.close()
        await self.listener.close()


class KpsHandler(ChainHandler):
    """QUIC with certhash pinning behind ``kps:`` and bare KPS addresses."""

    name = "kps"

    def claims(self, alt: Alternative) -> bool:
        return len(alt.sections) == 1 and alt.transport.name == "kps"

    async def dial(self, alt: Alternative, options: Options) -> Connection:
        host, port, certhash = dial_target(alt.transport)
        if WebRTCSettings.from_options(options).dial:
            # the transport override (KPS Go's DialWebRTC): the browser's path, from Python
            from .webrtc.dialer import dial_webrtc

            return await dial_webrtc(host, port, certhash, options)
        settings = KpsSettings.from_options(options)
        return await dial(host, port, certhash, settings, address=format_alternative(alt))

    async def listen(
        self, alt: Alternative, options: Options, on_connection: ConnectionHandler
    ) -> Listening:
        host, port, certhash = listen_target(alt.transport)
        identity = options.need_identity()
        if certhash is not None and certhash != identity.certhash:
            raise AddressError(
                str(alt),
                len(str(alt)) - len(certhash),
                f"this identity's certhash {identity.certhash}",
            )
        settings = KpsSettings.from_options(options)

        async def accepted(conn: KpsConnection) -> None:
            conn.address = Alternative(
                (kps_section(_announced_host(host), listener.port, identity.certhash),)
            )
            await on_connection(conn)

        listener = KpsListener(identity, settings, accepted)
        await listener.start(host, port)
        webrtc: WebRTCListener | None = None
        if WebRTCSettings.from_options(options).serve:
            from .webrtc.server import attach

            announced = format_alternative(
                Alternative((kps_section(_announced_host(host), listener.port, identity.certhash),))
            )

            async def accepted_webrtc(conn: Connection) -> None:
                await on_connection(conn)

            try:
                webrtc = attach(
                    listener.demux, identity, accepted_webrtc, options=options, address=announced
                )
            except BaseException:
                await listener.close()
                raise
        return KpsListening(listener, host, webrtc)


def _announced_host(bind_host: str) -> str:
    hosts = addresses_for_scope(bind_host, Scope.DEVICE)
    return hosts[0] if hosts else bind_host
