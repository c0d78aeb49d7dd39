"""The KPS adapter: ``KpsSession`` on a UDP socket's ``send_many``, driven by the shared shell.

KPS-specific here: datagram bursts in and out, connection ids for the listener's router, and
releasing the state as soon as nothing more will be sent (``finish_now``). Shared pieces: the
send buffers (``SendBudget``), the PING timer (``KeepAlive``) and ``DatagramVerbs``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from itertools import groupby
from operator import itemgetter
from typing import Protocol, cast

from ... import events as ev
from ...adapter import CoreAdapter, DatagramVerbs
from ...errors import Code
from ...keepalive import KeepAlive
from ...sendbudget import SendBudget
from ...stream import finished_future
from ..settings import KpsSettings
from .session import Address, KpsSession

__all__ = ["KpsAdapter", "KpsShell", "SendMany"]

SendMany = Callable[[list[bytes], Address], None]


class KpsShell(Protocol):
    """What the adapter needs of its connection (``connection.KpsConnection``) beyond the
    shell: the listener's hooks."""

    finished: bool

    def forget(self) -> None: ...
    def cid_changed(self, cid: bytes, added: bool) -> None: ...
    def released(self) -> None: ...


class KpsAdapter(DatagramVerbs, CoreAdapter):
    """The shell's verbs on a ``KpsSession``; its datagrams go out through ``send_many``."""

    weak_shell = True  # a finished connection must be freed by reference counting alone
    core: KpsSession

    def __init__(
        self,
        session: KpsSession,
        send_many: SendMany,
        settings: KpsSettings,
        released: asyncio.Future[None] | None,
    ) -> None:
        self.session = self.core = session
        self.settings, self._send_many, self._released = settings, send_many, released
        self.datagram_queue = settings.datagram_queue
        self.budget = SendBudget(session, settings.send_buffer, settings.connection_send_buffer)
        self.keepalive = KeepAlive(settings.ping_interval)
        self._closing = self._release = False

    @property
    def conn(self) -> KpsShell:
        return cast(KpsShell, self.shell)

    def next_event(self) -> ev.Event | None:
        if (credit := self.budget.next_event()) is not None:
            return credit
        while changes := self.session.cid_changes:
            change = changes.pop(0)
            self.conn.cid_changed(change.cid, change.added)
        event = self.session.next_event()
        if isinstance(event, ev.HandshakeCompleted):
            self.keepalive.start(self.loop.time())
        return event

    def transmit(self) -> None:
        session = self.session
        # consecutive datagrams to one address go out as one burst
        for addr, burst in groupby(session.datagrams_to_send(self.loop.time()), itemgetter(1)):
            self._send_many([data for data, _ in burst], addr)
        self.budget.drained()
        # a transport may keep a closed connection driven a while (webtransport: until its
        # close capsule, which QUIC retransmits, is acknowledged)
        if session.closed is not None and not getattr(session.quic, "close_lingering", False):
            core = session.quic._core
            if (
                self._release
                or core is None
                or core.state == "terminated"
                or session.deadline() is None
            ):
                self.finish_now()

    def get_timer(self) -> float | None:
        deadline = self.session.deadline()
        return deadline if self.session.closed is not None else self.keepalive.merge(deadline)

    def handle_timer(self, now: float) -> None:
        if self.keepalive.due(now):
            self.session.ping()
        self.session.handle_timer(now)

    def accepted(self, stream_id: int) -> None:
        self.session.accepted()

    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        return self.budget.send(stream_id, data, end)

    def consumed(self, stream_id: int, n: int) -> None:
        was_gated = self.session.gated
        self.session.consumed(stream_id, n)
        if was_gated and not self.session.gated:
            self.shell.update_soon()

    def delivered(self) -> bool:
        return self.session.all_acknowledged()

    def close(self, code: int, reason: str) -> None:
        self._closing = True
        self.session.close(code, reason)

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        self.keepalive.stop()
        graceful = self._closing and not aborting
        if event.remote or event.code == Code.TIMEOUT or graceful:
            # draining (the peer closed), timed out, or everything was acknowledged before our
            # CONNECTION_CLOSE: nothing more needs sending, so the state and a dialer's socket
            # go once the close is sent (``transmit``), not after the closing/draining period
            self._release = True
        if graceful and self._released is not None:
            return self.loop.create_task(self._wait_released(self._released))
        return finished_future()

    @staticmethod
    async def _wait_released(released: asyncio.Future[None]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(released), 1.0)

    def finish_now(self) -> None:
        """Release the connection's state: no timer, out of the listener's table."""
        conn = self.conn
        if conn.finished or self.session.closed is None:
            return
        self.budget.clear()
        conn.forget()
        conn.released()
