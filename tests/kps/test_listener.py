"""The listener's shared socket (QUIC + a WebRTC hook), the chain handler and its announce."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from keywire.address import Scope, format_alternative, parse
from keywire.identity import Identity
from keywire.kps import KpsHandler, KpsSettings, dial
from keywire.options import Options

from .helpers import echo_handler, listening

pytestmark = pytest.mark.timeout(30)

STUN_BINDING = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x07" * 12


class FakeWebRTC:
    """Stands in for the WebRTC side: claims STUN and every source it has answered."""

    def __init__(self, demux: Any) -> None:
        self.demux = demux
        self.peers: set[tuple[Any, ...]] = set()
        self.received: list[bytes] = []

    def knows(self, addr: tuple[Any, ...]) -> bool:
        return addr in self.peers

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        if data.startswith(b"decline"):
            return False
        self.peers.add(addr)
        self.received.append(data)
        self.demux.sendto(b"webrtc:" + data[:16], addr)
        return True


async def test_quic_and_a_webrtc_hook_share_one_udp_port() -> None:
    async with listening(host="0.0.0.0") as listener:
        assert listener.demux is not None
        hook = FakeWebRTC(listener.demux)
        listener.demux.webrtc = hook
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(STUN_BINDING, ("127.0.0.1", listener.port))
            reply = await asyncio.wait_for(loop.sock_recv(sock, 100), 2)
            assert reply.startswith(b"webrtc:")
            # once known, every datagram from that source goes to WebRTC, STUN or not
            sock.sendto(b"\x17\xfe\xfd dtls-ish", ("127.0.0.1", listener.port))
            await asyncio.wait_for(loop.sock_recv(sock, 100), 2)
        assert len(hook.received) == 2
        # a declined STUN-looking datagram falls through to QUIC (which drops it)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"decline" + b"\x00" * 13, ("127.0.0.1", listener.port))
        # QUIC keeps working on the same port meanwhile
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        stream = await conn.open_stream()
        await stream.write(b"quic too")
        await stream.close_write()
        assert await stream.read_all() == b"quic too"
        await conn.close()
        assert listener.demux.counts["webrtc"] == 2
        assert listener.demux.counts["quic"] > 0


async def test_a_failing_webrtc_hook_does_not_stop_quic() -> None:
    class Broken:
        def knows(self, addr: Any) -> bool:
            raise RuntimeError("boom")

        def datagram_received(self, data: bytes, addr: Any) -> bool:
            raise RuntimeError("boom")

    async with listening() as listener:
        assert listener.demux is not None
        listener.demux.webrtc = Broken()
        with pytest.raises(Exception):  # noqa: B017 - every QUIC packet hits the broken hook
            await dial(
                "127.0.0.1",
                listener.port,
                listener.identity.certhash,
                KpsSettings(handshake_timeout=0.5),
            )
        listener.demux.webrtc = None
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        await conn.close()


def test_the_handler_claims_kps_alternatives_only() -> None:
    handler = KpsHandler()
    certhash = Identity.generate().certhash
    assert handler.claims(parse(f"kps:127.0.0.1:4242:{certhash}").alternatives[0])
    assert handler.claims(parse(f"127.0.0.1:4242:{certhash}").alternatives[0])
    assert handler.claims(parse(f"[::1]:4242:{certhash}").alternatives[0])
    assert not handler.claims(parse("net:127.0.0.1:8008~shs:" + "A" * 43 + "=").alternatives[0])
    assert not handler.claims(parse(f"kps:127.0.0.1:4242:{certhash}~mux").alternatives[0])


@pytest.mark.parametrize("spec", ["kps:0.0.0.0:0", "kps:127.0.0.1:0", "kps:[::]:0"])
async def test_listen_announces_a_dialable_address_per_scope(spec: str) -> None:
    identity = Identity.generate()
    options = Options(identity=identity, extra={"kps.idle_timeout": "5"})
    handler = KpsHandler()
    accepted: list[Any] = []

    async def on_connection(conn: Any) -> None:
        accepted.append(conn)
        await echo_handler(conn)

    listening_ = await handler.listen(parse(spec).alternatives[0], options, on_connection)
    try:
        announced = listening_.announce(Scope.DEVICE)
        assert len(announced) == 1
        text = format_alternative(announced[0])
        host = "::1" if spec == "kps:[::]:0" else "127.0.0.1"
        assert (
            text == f"kps:{host.replace('::1', '::1')}:{listening_.port}:{identity.certhash}"
            or text.endswith(f":{listening_.port}:{identity.certhash}")
        )
        conn = await handler.dial(parse(text).alternatives[0], Options())
        stream = await conn.open_stream()
        await stream.write(b"via the handler")
        await stream.close_write()
        assert await stream.read_all() == b"via the handler"
        assert accepted and accepted[0].address.transport.args[-1] == identity.certhash
        # the bare KPS form dials too
        bare = f"127.0.0.1:{listening_.port}:{identity.certhash}"
        if spec != "kps:[::]:0" or socket.has_ipv6:
            conn2 = await handler.dial(parse(bare).alternatives[0], Options())
            await conn2.close()
        await conn.close()
    finally:
        await listening_.close()
        kps_listener = listening_.listener  # type: ignore[attr-defined]
        await kps_listener.close(abort_connections=True)
        await kps_listener.wait_closed(2.0)


async def test_listen_refuses_a_certhash_that_is_not_the_identity() -> None:
    other = Identity.generate().certhash
    with pytest.raises(ValueError, match="certhash"):
        await KpsHandler().listen(
            parse(f"kps:127.0.0.1:0:{other}").alternatives[0],
            Options(identity=Identity.generate()),
            echo_handler,
        )


async def test_settings_come_from_options_extra() -> None:
    with pytest.raises(ValueError, match=r"unknown setting .kps\."):
        KpsSettings.from_options(Options(extra={"kps.idle_timout": 3}))
    settings = KpsSettings.from_options(
        Options(
            handshake_timeout=2.5,
            max_connections=7,
            extra={"kps.max_streams": "12", "kps.keepalive": 1},
        )
    )
    assert settings.handshake_timeout == 2.5 and settings.max_connections == 7
    assert settings.max_streams == 12 and settings.keepalive == 1.0


async def test_keepalive_keeps_an_idle_connection_open_past_the_idle_timeout() -> None:
    async with listening(idle_timeout=0.6, keepalive=0) as listener:
        conn = await dial(
            "127.0.0.1",
            listener.port,
            listener.identity.certhash,
            KpsSettings(idle_timeout=0.6, keepalive=0.2),
        )
        await asyncio.sleep(1.5)
        assert not conn.closed
        quiet = await dial(
            "127.0.0.1",
            listener.port,
            listener.identity.certhash,
            KpsSettings(idle_timeout=0.6, keepalive=0),
        )
        error = await asyncio.wait_for(quiet.wait_closed(), 3)
        assert error.code == 4  # timeout
        await conn.close()
