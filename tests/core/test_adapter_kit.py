"""The pieces adapters share: ``SendBudget``, ``KeepAlive``, ``BaseAdapter``'s shell reference
and ``CoreAdapter``'s forwarding (proved by a real core, yamux, carried in memory on it
passing the whole conformance suite)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable

import pytest

from keywire import events as ev
from keywire.adapter import CoreAdapter
from keywire.keepalive import KeepAlive, earliest
from keywire.mux.session import MuxSession
from keywire.sendbudget import SendBudget
from keywire.shell import CoreConnection
from keywire.stream import Connection
from keywire.testing import CHECKS, Capabilities

pytestmark = pytest.mark.timeout(60)


class Queues:
    """What a core reports as queued and unsent, set by the test as a core would change it."""

    def __init__(self) -> None:
        self.streams: dict[int, int] = {}

    def send_buffered(self, stream_id: int) -> int:
        return self.streams.get(stream_id, 0)

    def send_buffered_total(self) -> int:
        return sum(self.streams.values())


def test_budget_grants_up_to_the_stream_buffer_then_waits_for_half() -> None:
    queues = Queues()
    budget = SendBudget(queues, per_stream=1000, per_connection=10_000)
    assert budget.grant(1, 600) == 600
    queues.streams[1] = 600
    assert budget.grant(1, 600) == 400  # the rest of the stream's buffer
    queues.streams[1] = 1000
    assert budget.grant(1, 1) == 0 and set(budget.blocked) == {1}
    queues.streams[1] = 501  # drained, but not to half: still refused, no credit
    budget.drained()
    assert budget.next_event() is None and budget.grant(1, 1) == 0
    queues.streams[1] = 500
    budget.drained()
    assert budget.next_event() == ev.CreditAvailable(1)
    assert budget.next_event() is None and not budget.blocked
    assert budget.grant(1, 10_000) == 500


def test_budget_bounds_the_connection_and_credits_every_refused_stream() -> None:
    queues = Queues()
    budget = SendBudget(queues, per_stream=1000, per_connection=1500)
    queues.streams[1] = budget.grant(1, 1000)
    assert budget.grant(2, 1000) == 500  # only what the connection has left
    queues.streams[2] = 500
    assert budget.grant(2, 1) == 0 and budget.grant(3, 1) == 0
    assert set(budget.blocked) == {2, 3}
    # streams 2 and 3 are low, but the connection is above its mark (1500 - 500)
    queues.streams[1] = 600
    budget.drained()
    assert budget.next_event() is None
    queues.streams[1] = 500
    budget.drained()
    credited = {budget.next_event(), budget.next_event()}
    assert credited == {ev.CreditAvailable(2), ev.CreditAvailable(3)}
    queues.streams[2] = budget.grant(2, 1)
    budget.grant(2, 10_000)
    budget.clear()
    assert not budget.blocked and budget.next_event() is None


def test_budget_rejects_sizes_that_could_never_grant() -> None:
    with pytest.raises(ValueError, match="positive"):
        SendBudget(Queues(), per_stream=0, per_connection=1)


def test_keepalive_merges_with_the_core_deadline_and_reschedules() -> None:
    assert earliest(None, None) is None and earliest(3.0, None) == 3.0
    assert earliest(None, 2.0) == 2.0 and earliest(3.0, 2.0) == 2.0
    off = KeepAlive(0)
    off.start(100.0)
    assert off.merge(105.0) == 105.0 and not off.due(1e9)
    ping = KeepAlive(10.0)
    assert ping.merge(105.0) == 105.0  # not started: the core's deadline alone
    ping.start(100.0)
    assert ping.merge(None) == 110.0 and ping.merge(105.0) == 105.0
    assert not ping.due(105.0)
    assert ping.due(109.9995)  # the loop may wake a hair early
    assert ping.at == pytest.approx(119.9995)
    ping.stop()
    assert ping.merge(None) is None and not ping.due(1e9)


# -- CoreAdapter over a real core ---------------------------------------------------------------
class MemoryMuxAdapter(CoreAdapter):
    """A yamux core whose bytes reach the peer's core on the next loop turn: ``CoreAdapter``
    forwards every stream verb, so only the I/O is written here."""

    core: MuxSession

    def __init__(self, core: MuxSession, *, weak: bool = False) -> None:
        self.core = core
        self.weak_shell = weak
        self.peer: MemoryMuxAdapter | None = None
        self.in_flight = 0

    def transmit(self) -> None:
        data = self.core.data_to_send()
        if data and self.peer is not None:
            self.in_flight += 1
            self.loop.call_soon(self._deliver, self.peer, data)

    def _deliver(self, peer: MemoryMuxAdapter, data: bytes) -> None:
        self.in_flight -= 1
        peer.core.receive_data(data, self.loop.time())
        peer.shell.update()
        self.shell.update()

    def delivered(self) -> bool:
        return self.in_flight == 0

    def abort(self, code: int, reason: str) -> None:
        self.core.abort(code, reason)

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        self.transmit()  # the GoAway
        self.peer = None
        return super().terminated(event, aborting=aborting)


async def test_a_weak_shell_is_freed_by_reference_counting_alone() -> None:
    adapter = MemoryMuxAdapter(MuxSession(client=True, now=0.0), weak=True)
    conn = CoreConnection(adapter)
    assert adapter.shell is conn and adapter.loop is asyncio.get_running_loop()
    conn.forget()
    assert conn.finished
    gc.disable()
    try:
        del conn
        with pytest.raises(AssertionError, match="gone"):
            adapter.shell  # noqa: B018
    finally:
        gc.enable()
    strong = MemoryMuxAdapter(MuxSession(client=True, now=0.0))
    CoreConnection(strong)
    assert isinstance(strong.shell, CoreConnection)  # held by the adapter itself


@contextlib.asynccontextmanager
async def memory_mux_pair() -> AsyncIterator[tuple[Connection, Connection]]:
    now = asyncio.get_running_loop().time()
    ours = MemoryMuxAdapter(MuxSession(client=True, now=now))
    theirs = MemoryMuxAdapter(MuxSession(client=False, now=now))
    ours.peer, theirs.peer = theirs, ours
    client, server = CoreConnection(ours), CoreConnection(theirs)
    client.update()
    try:
        yield client, server
    finally:
        for conn in (client, server):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.abort(), 3)


@pytest.mark.parametrize("check", list(CHECKS))
async def test_a_core_on_core_adapter_passes_the_suite(check: str) -> None:
    await CHECKS[check](memory_mux_pair, Capabilities(timeout=10.0))
