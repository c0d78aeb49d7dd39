"""The relay core with a fake clock: limits and fixes, deterministic and without sockets."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.link.relay.bucket import DebtBucket, HourlyQuota
from keywire.link.relay.config import RelayConfig
from keywire.link.relay.core import PIN_MEMORY_SEC, Close, RelayCore, Send, Splice

from .rawclient import RawHost

WALL = 1_800_000_000_000
URL = "wss://relay.example/v1/link"


def make_core(**settings_: Any) -> RelayCore:
    return RelayCore(RelayConfig(**settings_), 0.0, WALL)


def register(core: RelayCore, peer: int, host: RawHost, now: float, ts: int | None = None) -> list:  # type: ignore[type-arg]
    if peer not in core.peers:
        core.open(peer, "10.0.0.1", "relay.example", now)
    message = host.register(URL, ts=ts if ts is not None else core.wall_ms(now))
    return core.text(peer, json.dumps(message), now)


def link_up(
    core: RelayCore, host: RawHost, control: int, client: int, host_end: int, now: float
) -> Any:
    core.open(client, "10.0.0.2", "relay.example", now)
    found = core.text(client, json.dumps({"type": "resolve", "address": host.address}), now)
    link_id = found[0].message["linkId"]
    relay = core.text(client, json.dumps({"type": "relay", "linkId": link_id}), now)
    ticket = relay[0].message["ticket"]
    core.open(host_end, "10.0.0.1", "relay.example", now)
    actions = core.text(
        host_end, json.dumps({"type": "accept", "linkId": link_id, "ticket": ticket}), now
    )
    assert isinstance(actions[-1], Splice)
    return actions[-1].link


def test_debt_bucket() -> None:
    bucket = DebtBucket(100, 200, 0.0)
    bucket.charge(250, 0.0)
    assert bucket.tokens == -50 and bucket.wait(0.0) == 0.5
    assert bucket.wait(1.0) == 0.0 and bucket.tokens == 50
    assert bucket.cover_up_to(80, 1.0) == 50 and bucket.tokens == 0
    assert bucket.fraction_used(100.0) == 0.0


def test_quota_trickle_is_the_floor_and_recovers() -> None:
    quota = HourlyQuota(3600_000, 1000, 0.0)  # 1000 B/s refill, 1000 B/s trickle
    quota.charge(3600_000, 0.0)
    assert quota.throttled and quota.fraction_used(0.0) == 1.0
    sent, now = 0, 0.0
    while now < 10.0:  # ten seconds throttled: trickle only (2 KB burst), refill not added
        wait = quota.wait(now)
        now += wait
        quota.charge(500, now)
        sent += 500
    assert sent <= 10 * 1000 + 2000 + 500
    assert quota.throttled
    now += 0.1 * 3600  # a tenth of the hour refilled: released
    assert quota.wait(now) == 0.0 and not quota.throttled


def test_quota_survives_new_links() -> None:
    core = make_core(max_bps=0, hourly_bytes=10_000, trickle_bps=100)
    host = RawHost()
    register(core, 1, host, 0.0)
    first = link_up(core, host, 1, 2, 3, 0.0)
    core.relayed(first, False, 10_000, 0.0)
    assert core.wait(first, 0.0) == 0.0
    core.relayed(first, False, 1000, 0.0)
    assert core.wait(first, 0.0) > 0
    core.closed(2, 1.0)
    second = link_up(core, host, 1, 4, 5, 1.0)  # reconnecting does not reset the quota
    core.relayed(second, False, 1000, 1.0)
    assert core.wait(second, 1.0) > 0


def test_shaping_is_shared_by_both_directions_and_held_frames_count_as_activity() -> None:
    core = make_core(max_bps=1000, idle_sec=5)
    host = RawHost()
    register(core, 1, host, 0.0)
    link = link_up(core, host, 1, 2, 3, 0.0)
    core.relayed(link, True, 1500, 0.0)
    core.relayed(link, False, 1500, 0.0)
    assert core.wait(link, 0.0) == 1.0
    link.bucket.charge(10_000, 0.0)
    assert core.wait(link, 0.0) == 11.0
    assert core.sweep(8.0) == []  # waiting for the bucket is not idleness
    closes = core.sweep(17.0)
    assert {c.code for c in closes if isinstance(c, Close)} == {4004}


def test_register_pin_outlives_the_socket() -> None:
    core = make_core()
    host = RawHost()
    ts = core.wall_ms(0.0)
    assert isinstance(register(core, 1, host, 0.0, ts)[0], Send)
    core.closed(1, 1.0)
    replay = register(core, 2, host, 2.0, ts)
    assert replay == [Send(2, {"type": "error", "error": "register_stale"})]
    core.sweep(2.0 + PIN_MEMORY_SEC)
    late = register(core, 3, host, 2.0 + PIN_MEMORY_SEC, ts)  # now outside the skew window
    assert isinstance(late[0], Close) and late[0].code == 4007


def test_stats_hide_link_ids() -> None:
    core = make_core()
    host = RawHost()
    register(core, 1, host, 0.0)
    link = link_up(core, host, 1, 2, 3, 0.0)
    assert link.id not in json.dumps(core.stats(1.0, admin=False))
    assert link.id in json.dumps(core.stats(1.0, admin=True))


def test_usage_is_pushed_on_tier_crossings_at_most_once_a_second() -> None:
    core = make_core(max_bps=0, hourly_bytes=1000, trickle_bps=100)
    host = RawHost()
    register(core, 1, host, 0.0)
    link = link_up(core, host, 1, 2, 3, 0.0)
    pushed = core.relayed(link, False, 510, 0.0)
    assert pushed and pushed[0].message["connections"][0]["used"] >= 0.5
    assert core.relayed(link, False, 300, 0.5) == []  # within a second: quiet
    pushed = core.relayed(link, False, 10, 1.6)
    assert pushed and pushed[0].message["connections"][0]["used"] >= 0.8


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=60),
            st.dictionaries(
                st.sampled_from(["type", "address", "linkId", "ticket", "auth"]),
                st.one_of(
                    st.sampled_from(["register", "resolve", "relay", "accept", "getUsage"]),
                    st.text(max_size=10),
                    st.integers(),
                    st.none(),
                    st.dictionaries(st.text(max_size=5), st.integers()),
                ),
            ).map(json.dumps),
        ),
        max_size=6,
    )
)
def test_fuzz_control_frames(frames: list[str]) -> None:
    core = make_core()
    core.open(1, "10.0.0.1", "relay.example", 0.0)
    for frame in frames:
        for action in core.text(1, frame, 0.0):
            assert isinstance(action, Send | Close | Splice)
            if isinstance(action, Close):
                assert 4000 <= action.code <= 4010
    core.closed(1, 1.0)
    core.sweep(1000.0)
