"""Idle ``kps`` connections stay up by default: keep-alive PINGs run below the idle timeout."""

from __future__ import annotations

import asyncio

import pytest

import keywire
from keywire.errors import Code
from keywire.kps import KpsSettings
from keywire.options import Options

pytestmark = pytest.mark.timeout(30)


def test_defaults_keep_idle_connections_alive() -> None:
    settings = KpsSettings()
    assert 0 < settings.keepalive < settings.idle_timeout
    assert settings.ping_interval == settings.keepalive
    # a shortened idle timeout brings the PINGs with it (three per idle timeout)
    assert KpsSettings(idle_timeout=1.0).ping_interval == pytest.approx(1 / 3)
    assert KpsSettings(keepalive=0).ping_interval == 0


def test_settings_come_from_the_cli_keys() -> None:
    options = Options(extra={"kps.keepalive": "2.5", "kps.idle_timeout": "7"})
    settings = KpsSettings.from_options(options)
    assert (settings.keepalive, settings.idle_timeout) == (2.5, 7.0)
    with pytest.raises(ValueError, match=r"kps\.keepalive"):
        KpsSettings.from_options(Options(extra={"kps.keepalive": -1}))


async def test_idle_session_outlives_several_idle_timeouts_and_still_echoes() -> None:
    short = {"kps.idle_timeout": 1.0}
    async with keywire.Server(["kps:127.0.0.1:0"], options=Options(extra=short)) as server:
        dialer = await keywire.dial(server.address(), options=Options(extra=short))
        listener = await asyncio.wait_for(server.accept(), 5)
        try:
            await asyncio.sleep(3.5)  # three and a half idle timeouts, nothing sent by anyone
            assert not dialer.closed and not listener.closed
            stream = await dialer.open_stream()
            await stream.write(b"still there?")
            peer = await asyncio.wait_for(listener.accept_stream(), 5)
            assert await peer.readexactly(12) == b"still there?"
            await peer.write(b"yes")
            await peer.close_write()
            assert await asyncio.wait_for(stream.read_all(), 5) == b"yes"
        finally:
            await dialer.close()
        assert (await asyncio.wait_for(listener.wait_closed(), 5)).code == Code.NONE


async def test_without_keepalive_an_idle_session_times_out() -> None:
    """The same set-up with keep-alive off on both ends: the idle timeout is real."""
    quiet = {"kps.idle_timeout": 1.0, "kps.keepalive": 0}
    async with keywire.Server(["kps:127.0.0.1:0"], options=Options(extra=quiet)) as server:
        dialer = await keywire.dial(server.address(), options=Options(extra=quiet))
        try:
            reason = await asyncio.wait_for(dialer.wait_closed(), 5)
            assert reason.code == Code.TIMEOUT
        finally:
            await dialer.abort()
