"""WebRTC through a lossy, reordering, duplicating UDP proxy (the KPS tests' proxy)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from keywire.kps.webrtc.dialer import WebRTCDialError, dial_webrtc
from keywire.options import Options

from .wrtc_helpers import Served

pytestmark = pytest.mark.timeout(60)


def _proxy_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "kps" / "udp_proxy.py"
    spec = importlib.util.spec_from_file_location("kps_udp_proxy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


proxy_mod = _proxy_module()


async def test_transfer_survives_loss_reorder_duplication(served: Served) -> None:
    faults = proxy_mod.Faults(drop=0.03, duplicate=0.03, reorder=0.03, seed=7)
    async with proxy_mod.UdpProxy(("127.0.0.1", served.port), faults) as proxy:
        client = await dial_webrtc("127.0.0.1", proxy.port, served.certhash, Options(timeout=15))
        server = await served.next_connection()
        up, down = os.urandom(2 << 20), os.urandom(2 << 20)
        stream = await client.open_stream()

        async def server_side() -> bytes:
            peer = await server.accept_stream()
            got = await peer.read_all()
            await peer.write(down)
            await peer.close_write()
            return got

        task = asyncio.create_task(server_side())
        await stream.write(up)
        await stream.close_write()
        received = await asyncio.wait_for(stream.read_all(), 40)
        got = await task
        assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(received).digest() == hashlib.sha256(down).digest()
        assert proxy.counters.dropped > 0 and proxy.counters.duplicated > 0
        assert proxy.counters.reordered > 0
        await client.close()


async def test_black_hole_fails_the_dial_within_its_timeout(served: Served) -> None:
    async with proxy_mod.UdpProxy(
        ("127.0.0.1", served.port), proxy_mod.Faults(blackhole=True)
    ) as proxy:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WebRTCDialError, match=r"timed out after 1\.5 s"):
            await dial_webrtc("127.0.0.1", proxy.port, served.certhash, Options(timeout=1.5))
        assert loop.time() - started < 3


async def test_path_loss_mid_transfer_times_out_both_sides(served: Served) -> None:
    from keywire.errors import Code, StreamError
    from keywire.kps.webrtc.settings import WebRTCSettings

    quick = WebRTCSettings(idle_timeout=2.0)
    served.listener.settings = quick
    async with proxy_mod.UdpProxy(("127.0.0.1", served.port)) as proxy:
        client = await dial_webrtc("127.0.0.1", proxy.port, served.certhash, settings=quick)
        server = await served.next_connection()
        stream = await client.open_stream()
        await stream.write(b"before")
        peer = await server.accept_stream()
        assert await peer.readexactly(6) == b"before"
        proxy.faults.blackhole = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer = asyncio.create_task(stream.write(bytes(4 << 20)))
        client_end, server_end = await asyncio.wait_for(
            asyncio.gather(client.wait_closed(), server.wait_closed()), 10
        )
        assert client_end.code == Code.TIMEOUT and server_end.code == Code.TIMEOUT
        assert loop.time() - started < 5
        with pytest.raises(StreamError) as err:
            await writer
        assert err.value.code == Code.TIMEOUT
