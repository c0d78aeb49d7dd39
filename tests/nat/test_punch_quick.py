"""Failing punch rounds are cheap: every round but the last gives up after a bound derived from
the measured round trip, so pairs that go direct only in round 2 or 3 get there in about a
second instead of paying each earlier round's full ``dial_timeout`` (2.5 s by default)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from keywire.identity import Identity
from keywire.kps import KpsListener, KpsSettings
from keywire.nat.holepunch import PunchMessage, encode_message
from keywire.nat.punch import ClientStart, PunchSettings, _host_mapping, punch_as_client
from keywire.pipeconn import SingleStreamConnection
from keywire.testing import memory_pipe_pair

from ..kps.helpers import echo_handler
from .lab import PRESETS, Lab
from .test_punch import PAYLOAD, STUN, run_pair

DEFAULTS = PunchSettings()


def test_every_round_but_the_last_is_bounded_by_the_round_trip() -> None:
    s = PunchSettings(dial_timeout=2.5, quick_rtts=4.0, quick_margin=0.2, quick_floor=0.3)
    assert s.round_bound(0.001, last=False) == pytest.approx(0.3)  # the floor
    assert s.round_bound(0.05, last=False) == pytest.approx(0.4)  # 4 × 50 ms + 0.2
    assert s.round_bound(1.0, last=False) == 2.5  # never above dial_timeout
    assert s.round_bound(0.001, last=True) == 2.5  # the last round keeps the full bound
    assert PunchSettings(quick_floor=0).round_bound(0.001, last=False) == 2.5  # switched off


@pytest.mark.parametrize(
    ("host_preset", "client_preset", "within"),
    [
        # a client dial cannot pass the host's endpoint-dependent NAT, the host dialling the
        # client's listener does: the host sees its mapping change between the relay's two
        # STUN ports and reverses round 1. Before: ≈ 2.6 s (round 1's 2.5 s bound, round 2).
        ("edm-pp", "eim-apdf", 1.5),
        # the client sees two mappings at the relay's two STUN ports and offers a predicted
        # address (a fresh socket's first mapping) in round 1. Before: round 3, ≈ 1.0 s with
        # quick rounds, ≈ 6.2 s with full bounds.
        ("eim-apdf", "edm-pp", 1.0),
    ],
)
def test_a_pair_that_needs_a_later_round_goes_direct_quickly(
    lab: Lab, tmp_path: Path, host_preset: str, client_preset: str, within: float
) -> None:
    """With the default settings (2.5 s dial bound); the bounds leave room for a loaded CI
    machine (these pairs take 0.5 s and 1.0 s on the lab's idle paths)."""
    outcome = run_pair(lab, host_preset, client_preset, tmp_path, settings=DEFAULTS)
    print(f"host {host_preset} <- client {client_preset}: {outcome.seconds * 1000:.0f} ms")
    assert outcome.direct and outcome.direct_echo == PAYLOAD, outcome
    assert outcome.host_says is True and outcome.host_direct_conns >= 1
    assert outcome.relayed_echo == b"over the relay"
    assert outcome.seconds < within, outcome.seconds


def test_a_pair_that_cannot_go_direct_gives_up_sooner(lab: Lab, tmp_path: Path) -> None:
    """Both sides randomise their ports: all three rounds fail, the host says ``bye`` after
    the two quick rounds and the full last one (before: three full bounds, ≈ 9 s; now ≈ 4 s,
    the last round being one where the client listens for dial_timeout + 1 s)."""
    outcome = run_pair(lab, "edm-random", "edm-random", tmp_path, settings=DEFAULTS)
    print(f"both random: relay after {outcome.seconds * 1000:.0f} ms")
    assert not outcome.direct and outcome.host_says is False
    assert outcome.relayed_echo == b"over the relay"
    assert outcome.seconds < 6.0, outcome.seconds


@pytest.mark.parametrize("preset", PRESETS)
def test_the_host_learns_whether_its_nat_maps_endpoint_dependently(lab: Lab, preset: str) -> None:
    """Asked from the KPS listener's socket at the relay's two STUN ports at once, an
    endpoint-dependent NAT shows two mappings; that host starts with the round it dials in."""
    lab.relay(host="0.0.0.0", port=8080, stun_ports=(3478, 3479))
    peer = lab.add_peer("h", preset)
    mapped, dependent, took = lab.ns_loop(peer.ns).run(_probe(DEFAULTS))
    assert mapped is not None and mapped[0] == peer.public_ip
    assert dependent is (preset in ("edm-pp", "edm-random"))
    assert took < 1.0


def test_a_relay_with_one_stun_port_costs_the_probe_little(lab: Lab) -> None:
    """No second STUN port answers: the mapping counts as independent (the usual round order)
    after a short grace, not after the STUN timeout."""
    lab.relay(host="0.0.0.0", port=8080, stun_ports=(3478,))
    peer = lab.add_peer("h", "edm-pp")
    mapped, dependent, took = lab.ns_loop(peer.ns).run(_probe(DEFAULTS))
    assert mapped is not None and dependent is None  # unknown: told to the peer as such
    assert took < 0.5 < DEFAULTS.stun_timeout


async def _probe(s: PunchSettings) -> tuple[tuple[str, int] | None, bool | None, float]:
    listener = KpsListener(Identity.generate(), KpsSettings(), echo_handler)
    await listener.start("0.0.0.0", 0)
    try:
        assert listener.demux is not None
        started = time.monotonic()
        mapped, dependent = await _host_mapping(listener.demux, STUN, s)
        return mapped, dependent, time.monotonic() - started
    finally:
        await listener.close(abort_connections=True)


async def test_the_listener_started_ahead_is_closed_when_no_reversed_round_comes() -> None:
    """The client starts a reversed round's listener (socket and STUN query) while the
    host's first offer travels; a host that says ``bye`` at once leaves no socket behind."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a STUN server that never answers
    silent.bind(("127.0.0.1", 0))
    try:
        async with asyncio.timeout(20):
            before = len(os.listdir("/proc/self/fd"))
            ours, theirs = memory_pipe_pair()
            conn = SingleStreamConnection(ours, "test")
            stream = await conn.open_stream()
            bye = encode_message(PunchMessage("bye"))
            await theirs.write(bye)  # (length-prefixed already)
            quick = PunchSettings(stun_timeout=0.3, probe_mapping=False)
            assert await punch_as_client(stream, silent.getsockname(), quick) is None
            await conn.abort()
            await asyncio.sleep(0.1)
            assert len(os.listdir("/proc/self/fd")) == before
    finally:
        silent.close()


async def test_stun_work_started_before_the_exchange_is_closed_when_unused() -> None:
    """The Link client starts round 1's socket and a reversed round's listener when it asks
    the host for an exchange (``ClientStart``): a host that declines (``close`` without an
    exchange) or ends the exchange with ``bye`` at once leaves no socket behind, with a STUN
    server that never answers (the queries still pending) and with one that does."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never answers
    silent.bind(("127.0.0.1", 0))
    quick = PunchSettings(stun_timeout=0.3, probe_mapping=False)
    kps = KpsSettings()
    try:
        async with asyncio.timeout(20):
            before = len(os.listdir("/proc/self/fd"))
            start = ClientStart(silent.getsockname(), quick, kps)
            await asyncio.sleep(0.05)  # the queries are out, unanswered
            await start.close()
            await start.close()  # idempotent
            start = ClientStart(silent.getsockname(), quick, kps)
            await asyncio.sleep(0.5)  # the queries timed out: the sockets are made and kept
            await start.close()
            await asyncio.sleep(0.1)
            assert len(os.listdir("/proc/self/fd")) == before

            ours, theirs = memory_pipe_pair()
            conn = SingleStreamConnection(ours, "test")
            stream = await conn.open_stream()
            await theirs.write(encode_message(PunchMessage("bye")))
            start = ClientStart(silent.getsockname(), quick, kps)
            got = await punch_as_client(stream, silent.getsockname(), quick, kps, start=start)
            assert got is None
            await conn.abort()
            await asyncio.sleep(0.1)
            assert len(os.listdir("/proc/self/fd")) == before
    finally:
        silent.close()
