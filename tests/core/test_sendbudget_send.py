"""``SendBudget.send``: an adapter's ``send`` verb gated by the budget (what KPS's adapter uses)."""

from __future__ import annotations

from keywire import events as ev
from keywire.sendbudget import SendBudget


class QueueingCore:
    """A core that keeps everything it is given until ``sent`` says it went out (as qh3 does)."""

    def __init__(self) -> None:
        self.queued: dict[int, int] = {}
        self.calls: list[tuple[int, bytes, bool]] = []

    def send_buffered(self, stream_id: int) -> int:
        return self.queued.get(stream_id, 0)

    def send_buffered_total(self) -> int:
        return sum(self.queued.values())

    def send(self, stream_id: int, data: bytes | memoryview, fin: bool = False, /) -> int:
        self.calls.append((stream_id, bytes(data), fin))
        self.queued[stream_id] = self.queued.get(stream_id, 0) + len(data)
        return len(data)

    def sent(self, stream_id: int, n: int) -> None:
        self.queued[stream_id] -= n


def test_send_queues_what_the_budget_grants_and_credits_after_draining() -> None:
    core = QueueingCore()
    budget = SendBudget(core, per_stream=100, per_connection=1000)
    assert budget.send(4, memoryview(b"a" * 60), False) == 60
    assert budget.send(4, memoryview(b"b" * 60), False) == 40  # the rest of the buffer
    assert core.calls == [(4, b"a" * 60, False), (4, b"b" * 40, False)]
    assert budget.send(4, memoryview(b"c"), False) == 0  # refused: nothing reaches the core
    assert len(core.calls) == 2 and set(budget.blocked) == {4}
    core.sent(4, 50)
    budget.drained()
    assert budget.next_event() == ev.CreditAvailable(4)
    assert budget.send(4, memoryview(b"d" * 10), False) == 10


def test_fin_goes_at_once_even_when_the_stream_is_refused() -> None:
    core = QueueingCore()
    budget = SendBudget(core, per_stream=10, per_connection=1000)
    assert budget.send(8, memoryview(b"x" * 10), False) == 10
    assert budget.send(8, memoryview(b"y"), False) == 0
    assert budget.send(8, memoryview(b""), True) == 0
    assert core.calls[-1] == (8, b"", True)
