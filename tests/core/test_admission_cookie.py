"""``admission.SourceCookie`` and ``admission.HashSlots``: what a datagram listener may keep
about sources that have proved nothing (the WebRTC gate's return-routability check)."""

from __future__ import annotations

import pytest

from keywire.admission import HashSlots, SourceCookie


def test_a_cookie_is_bound_to_its_source_and_window() -> None:
    cookie = SourceCookie(size=12, window=10.0, key=bytes(32))
    made = cookie.make("127.0.0.1|4000", 100.0)
    assert len(made) == 12
    assert cookie.valid("127.0.0.1|4000", made, 100.0)
    assert cookie.valid("127.0.0.1|4000", made, 119.9)  # the next window still takes it
    assert not cookie.valid("127.0.0.1|4000", made, 120.0)  # two windows on: expired
    assert not cookie.valid("127.0.0.1|4001", made, 100.0)  # another port
    assert not cookie.valid("127.0.0.2|4000", made, 100.0)  # another address
    assert not cookie.valid("127.0.0.1|4000", made[:-1] + bytes([made[-1] ^ 1]), 100.0)
    other = SourceCookie(size=12, window=10.0, key=bytes([1]) * 32)
    assert not other.valid("127.0.0.1|4000", made, 100.0)  # another listener's key
    assert SourceCookie().make("x", 0.0) != SourceCookie().make("x", 0.0)  # random keys
    for size, window in ((3, 10.0), (33, 10.0), (12, 0.0)):
        with pytest.raises(ValueError):
            SourceCookie(size=size, window=window)


def test_slots_never_grow_and_a_newcomer_overwrites() -> None:
    slots: HashSlots[int] = HashSlots(64, key=bytes(16))
    for n in range(10_000):
        slots.put(f"10.{n >> 8 & 255}.{n & 255}.1|9", n)
    assert len(slots) <= 64
    slots.put("victim|1", -1)
    assert slots.take("victim|1") == -1
    assert slots.take("victim|1") is None  # taken once
    slots.put("victim|1", -1)
    flooded = 0
    for n in range(2_000):  # a flood overwrites the victim's slot only by chance (1 in 64)
        slots.put(f"spoof{n}|1", n)
        flooded += 1
        if slots.take("victim|1") is None:
            break
        slots.put("victim|1", -1)
    assert 1 <= flooded < 2_000
    with pytest.raises(ValueError):
        HashSlots(0)
