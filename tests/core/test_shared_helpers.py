"""The small helpers several modules now share (issue 11's de-duplication): one settings
coercion, one ``readexactly`` loop, one JSON-object reader for Link, one waiter wake-up."""

from __future__ import annotations

import asyncio

import pytest

from keywire.kps.settings import KpsSettings
from keywire.kps.webrtc.settings import WebRTCSettings
from keywire.link.wire import json_object
from keywire.nat.linkdirect import direct_settings
from keywire.options import Options, as_number, setting_value
from keywire.stream import ReceiveBuffer, read_exactly, wake_all
from keywire.testing import memory_pipe_pair


@pytest.mark.parametrize(
    ("kind", "raw", "want"),
    [
        (float, "2.5", 2.5),
        ("float", 3, 3.0),
        (int, "7", 7),
        ("int", 8.0, 8),
        (int, "8.0", 8),
        (bool, "yes", True),
        ("bool", "off", False),
        (bool, 1, True),
        (bool, False, False),
    ],
)
def test_setting_value_accepts_numbers_flags_and_their_text(
    kind: object, raw: object, want: object
) -> None:
    got = setting_value("x.key", kind, raw)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        (float, "soon", "x.key must be a number, got 'soon'"),
        (float, True, "x.key must be a number"),
        (int, 1.5, "x.key must be a whole number"),
        (int, "many", "x.key must be a whole number"),
        (int, float("inf"), "x.key must be a whole number"),
        (bool, "tru", "x.key must be true or false, got 'tru'"),
        (bool, 2, "x.key must be true or false"),
        (bool, None, "x.key must be true or false"),
    ],
)
def test_setting_value_names_the_key_of_a_bad_value(
    kind: object, raw: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        setting_value("x.key", kind, raw)


def test_as_number_refuses_flags_and_other_types() -> None:
    assert as_number("4") == 4.0 and as_number(4) == 4 and as_number(0.5) == 0.5
    assert as_number(True) is None and as_number("four") is None and as_number(None) is None


def test_every_plugin_coerces_the_same_way() -> None:
    """kps, webrtc and Link's direct path all read text settings through ``setting_value``."""
    kps = KpsSettings.from_options(Options(extra={"kps.max_streams": "12"}))
    assert kps.max_streams == 12
    webrtc = WebRTCSettings.from_options(Options(extra={"webrtc.dial": "on"}))
    assert webrtc.dial is True
    # a misspelt flag fails instead of silently meaning False
    with pytest.raises(ValueError, match=r"webrtc\.dial must be true or false"):
        WebRTCSettings.from_options(Options(extra={"webrtc.dial": "ture"}))
    with pytest.raises(ValueError, match=r"link\.direct must be true or false"):
        direct_settings({"link.direct": "maybe"})
    assert direct_settings({"link.direct": "no"}).enabled is False


def test_json_object_reads_only_objects() -> None:
    assert json_object(b'{"type": "x"}') == {"type": "x"}
    assert json_object('{"a": 1}') == {"a": 1}
    for bad in (b"[1]", b"3", b"{", b"\xff{}", ""):
        assert json_object(bad) is None


async def test_read_exactly_over_a_buffer_and_a_pipe() -> None:
    async with asyncio.timeout(5):
        buffer = ReceiveBuffer()
        buffer.feed(b"abc")
        buffer.feed(b"defg")
        assert await buffer.readexactly(5) == b"abcde"
        buffer.feed_eof()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await buffer.readexactly(3)
        assert info.value.partial == b"fg"
        with pytest.raises(ValueError, match="n >= 0"):
            await read_exactly(buffer.read, -1)

        left, right = memory_pipe_pair()
        await left.write(b"0123456789")
        await left.close_write()
        assert await right.readexactly(4) == b"0123"
        with pytest.raises(asyncio.IncompleteReadError):
            await right.readexactly(10)


async def test_wake_all_skips_cancelled_waiters() -> None:
    loop = asyncio.get_running_loop()
    waiting, cancelled = loop.create_future(), loop.create_future()
    cancelled.cancel()
    wake_all([waiting, cancelled])
    assert waiting.result() is None and cancelled.cancelled()
