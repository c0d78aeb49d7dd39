"""The Python WebRTC-direct dialer: reach a KPS listener the way a browser does.

It is KPS Go's ``DialWebRTC``: the same synthesized answer a browser sets, the same derived ICE
password, DTLS pinned to the certhash, then HELLO. ``webrtc.wire_version`` picks the ICE
credentials:
1 (default; KPS wire v1, which every KPS server speaks) or 2 (keywire wire v2, what keywire.js
uses; keywire listeners accept both). keywire dials KPS over QUIC by default; this
path exists so the server's WebRTC side is tested without a browser, and for peers that only
speak WebRTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from aiortc import RTCCertificate

from ...errors import ConnectionClosed, HandshakeError, IdentityError, PinMismatch
from ...identity import decode_certhash, encode_certhash
from ...options import Options
from ...stream import RemoteIdentity
from ..udp import resolve
from .aiortc_engine import AiortcLink, DialerIce, EngineError, PinnedDtls, RemoteDescription
from .connection import WebRTCConnection
from .ice import derive_ice_password, derive_ice_password_v2, seal_server_ufrag
from .sdp import random_ufrag, server_answer
from .settings import WebRTCSettings


class WebRTCDialError(HandshakeError):
    """The WebRTC dial failed; the message says at which stage and the likely cause."""


async def dial_webrtc(
    host: str,
    port: int,
    certhash: str,
    options: Options | None = None,
    *,
    settings: WebRTCSettings | None = None,
    pin_digest: bytes | None = None,
) -> WebRTCConnection:
    """Open a KPS connection to ``host:port`` over WebRTC, pinned to ``certhash``.

    ``pin_digest`` (tests only) pins DTLS to another digest than the one the ICE password is
    derived from, to exercise the pin independently of ICE.
    """
    settings = settings or WebRTCSettings.from_options(options)
    timeout = options.timeout if options is not None else settings.handshake_timeout
    try:
        digest = decode_certhash(certhash)
    except IdentityError as exc:
        raise WebRTCDialError(f"kps: {exc}") from None
    host, port = await resolve(host, port)
    ufrag = random_ufrag()
    if settings.wire_version == 2:  # our own password travels to the server inside its ufrag
        password = secrets.token_hex(16)
        server_ufrag = seal_server_ufrag(digest, ufrag, password)
        server_password = derive_ice_password_v2(digest, server_ufrag)
    else:  # KPS v1: one ufrag and one derived password on both sides
        password = server_password = derive_ice_password(digest, ufrag)
        server_ufrag = ufrag
    answer = RemoteDescription(
        server_answer(host, port, server_ufrag, server_password, pin_digest or digest)
    )
    ice = DialerIce(ufrag=ufrag, password=password, server_ip=host)
    link = AiortcLink(ice, RTCCertificate.generateCertificate(), server=False)
    address = f"kps:{'[' + host + ']' if ':' in host else host}:{port}:{certhash}"
    conn = WebRTCConnection(
        link,
        is_client=True,
        address=address,
        remote=RemoteIdentity(certhash=certhash),
        settings=settings.wire,
    )
    where = f"{host}:{port}"
    silent = (
        "wrong certhash, no WebRTC listener, unreachable, or a KPS server that speaks "
        "only wire v1 (webrtc.wire_version=1)"
        if settings.wire_version == 2
        else "wrong certhash, no WebRTC listener, or unreachable"
    )
    try:
        async with asyncio.timeout(timeout):
            await link.start(answer)
            await conn.wait_ready()
    except TimeoutError:
        await _abandon(conn)
        stage = "ICE" if link.ice.state != "completed" else "DTLS/SCTP/HELLO"
        raise WebRTCDialError(
            f"WebRTC dial to {where} timed out after {timeout:g} s during {stage}"
            + (f" (no answer to ICE checks: {silent})" if stage == "ICE" else "")
        ) from None
    except EngineError as exc:
        await _abandon(conn)
        dtls = link.dtls
        if exc.stage == "dtls" and isinstance(dtls, PinnedDtls) and dtls.pin_failed:
            actual = encode_certhash(dtls.presented) if dtls.presented else "(none)"
            raise PinMismatch(encode_certhash(pin_digest or digest), actual) from None
        if exc.stage == "ice":
            raise WebRTCDialError(
                f"WebRTC dial to {where}: no answer to ICE checks ({silent})"
            ) from None
        raise WebRTCDialError(f"WebRTC dial to {where}: {exc}") from None
    except ConnectionClosed as exc:
        await _abandon(conn)
        raise WebRTCDialError(
            f"WebRTC dial to {where}: the server closed the connection: {exc}"
        ) from None
    except BaseException:
        await _abandon(conn)
        raise
    return conn


async def _abandon(conn: WebRTCConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.close(2)
