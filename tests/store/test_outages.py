"""A store stream survives any store outage (issue 18, item 3), proved in simulated time.

An echo (the listener reads only what it can write back, as ``listen --echo`` does) runs
through a store that pauses (SIGSTOP), restarts (kill -9 with persistence) or loses
wake-ups and puts; each outage is placed at every point of the exchange, from before the
first frame to the last acks. Every run must complete byte-exact: a stall fails the
simulation ("stuck" or "passed N s").
"""

from __future__ import annotations

import random

import pytest

from keywire.store.core import StoreCore, StoreParams
from keywire.store.schedule import Role

from .sim import Endpoint, SimStore

SECRET = bytes(range(7, 39))
PARAMS = dict(window=8, value_size=1024, rto_min=0.05, rto_initial=0.2)
SIZE = 150_000
#: outage start points across the exchange (fractions of its undisturbed duration)
POINTS = 24


def _echo(
    seed: int, size: int = SIZE, chunk: int = 4096, setup: object = None, **store: object
) -> tuple[SimStore, Endpoint, Endpoint, bytes]:
    params = StoreParams(seed=seed, **PARAMS)  # type: ignore[arg-type]
    listener = Endpoint(StoreCore(SECRET, Role.LISTENER, params), echo=True, echo_chunk=chunk)
    dialer = Endpoint(StoreCore(SECRET, Role.DIALER, params))
    payload = random.Random(seed).randbytes(size)
    dialer.outbox = payload
    sim = SimStore(latency=0.002, jitter=0.003, seed=seed, **store)  # type: ignore[arg-type]
    if callable(setup):
        setup(sim)
    return sim, listener, dialer, payload


def _finish(
    sim: SimStore, listener: Endpoint, dialer: Endpoint, payload: bytes, limit: float = 300.0
) -> float:
    took = sim.run(
        [listener, dialer],
        lambda: dialer.eof and listener.core.finished and dialer.core.finished,
        limit=limit,
    )
    assert bytes(dialer.received) == payload
    assert bytes(listener.received) == payload
    assert not listener.errors and not dialer.errors
    assert not listener.rejected and not dialer.rejected
    return took


def _undisturbed() -> float:
    return _finish(*_echo(1))


@pytest.mark.parametrize("kind", ["pause", "restart"])
def test_an_outage_at_every_point_of_an_echo(kind: str) -> None:
    length = _undisturbed()
    outage = 10.0 if kind == "pause" else 3.0
    for point in range(POINTS + 2):
        start = length * point / POINTS  # the last two start after the undisturbed end

        def setup(sim: SimStore, start: float = start) -> None:
            if kind == "pause":
                sim.pause(start, outage)
            else:
                sim.restart(start, outage)

        sim, listener, dialer, payload = _echo(point, setup=setup)
        took = _finish(sim, listener, dialer, payload)
        # resumes within a few retry periods of the store's return (retry_max is 2 s)
        assert took < length + start + outage + 10, (kind, point, took)
        if kind == "restart" and start < length:
            assert sim.failed_ops > 0


def test_two_outages_back_to_back_and_lost_wakeups() -> None:
    length = _undisturbed()
    for seed in range(8):
        rng = random.Random(seed)

        def setup(sim: SimStore, rng: random.Random = rng) -> None:
            sim.pause(rng.uniform(0, length), rng.uniform(0.5, 10))
            kill = rng.uniform(0, length)
            sim.restart(kill, rng.uniform(0.2, 3))
            sim.restart(kill + 3.5, rng.uniform(0.2, 3))

        _finish(*_echo(seed, setup=setup, lost_wakeup=0.3, recheck=2.0, loss=0.05))


@pytest.mark.parametrize("seed", range(4))
def test_full_read_buffer_with_a_blocked_writer_does_not_deadlock(seed: int) -> None:
    """The stall of issue 18: the echoing side's application is blocked in write (its window
    waits for acks) and so reads nothing; its read buffer is full. The acks it waits for are
    in the peer's frames, so it must keep reading them; before the fix it stopped, and both
    sides waited for ever with every frame in the store."""
    sim, listener, dialer, payload = _echo(
        seed, size=1_500_000, chunk=16384, lost_wakeup=0.3, recheck=2.0, loss=0.02
    )
    _finish(sim, listener, dialer, payload, limit=600)


def test_a_store_that_loses_every_put_is_not_hammered() -> None:
    """A store that acknowledges puts but keeps none (a broken replica, a full disk that does
    not say so) for a minute: the head-of-line probe finds the frames missing round after
    round. Re-putting them at probe pace (every ~0.1 s each) sent thousands of puts; with no
    ack in between, the probes back off like the retransmission timer. Once the store keeps
    puts again, the echo completes."""
    sim, listener, dialer, payload = _echo(3)
    sim.loss = 1.0
    counted: list[int] = []

    def heal() -> None:
        counted.append(sim.puts)
        sim.loss = 0.0

    sim.at(60.0, heal, store_side=False)
    took = _finish(sim, listener, dialer, payload)
    # 8 frames of a window plus the dialer's hello, for 60 s: a few dozen puts, not thousands
    assert counted and counted[0] < 300, counted  # 4616 before the probe backed off
    assert took < 60 + 45, took
