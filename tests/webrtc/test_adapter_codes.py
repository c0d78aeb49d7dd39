"""The WebRTC adapter on the shared shell: a code the wire cannot carry is refused before any
state changes, so the stream stays usable (the engine would otherwise mark it reset first)."""

from __future__ import annotations

import asyncio

import pytest

from keywire.errors import Code, StreamError
from keywire.kps.webrtc.dialer import dial_webrtc

from .wrtc_helpers import Served

pytestmark = pytest.mark.timeout(60)


async def test_out_of_range_codes_are_refused_and_the_stream_goes_on(served: Served) -> None:
    async with asyncio.timeout(30):
        client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
        server = await served.next_connection()
        stream = await client.open_stream()
        with pytest.raises(ValueError, match="outside"):
            stream.reset(1 << 32)
        with pytest.raises(ValueError, match="outside"):
            stream.stop_sending(-1)
        await stream.write(b"still fine")
        await stream.close_write()
        peer = await server.accept_stream()
        assert await peer.read_all() == b"still fine"
        peer.reset(7)  # a code that fits goes through
        with pytest.raises(StreamError) as caught:
            await stream.read_all()
        assert caught.value.code == 7 and caught.value.remote
        await client.close()
        assert (await server.wait_closed()).code == Code.NONE
