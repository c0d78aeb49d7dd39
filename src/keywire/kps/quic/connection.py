"""The KPS adapter: ``KpsSession`` on a UDP socket's ``send_many``, driven by the shared shell.

KPS-specific here: datagram bursts in and out, the per-stream and per-connection send buffers
(a writer gets credit again once its stream is down to half a buffer), the keep-alive ping,
connection ids for the listener's router, and releasing the state as soon as nothing more will
be sent (``finished``).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import groupby
from operator import itemgetter

from ... import events as ev
from ...adapter import BaseAdapter
from ...errors import Code
from ...shell import CoreConnection, CoreStream
from ...stream import RemoteIdentity, finished_future, fresh
from ..settings import KpsSettings
from .session import Address, KpsSession

__all__ = ["KpsAdapter", "KpsConnection", "KpsStream", "SendMany", "fresh"]

SendMany = Callable[[list[bytes], Address], None]


class KpsStream(CoreStream):
    """One bidirectional QUIC stream with KPS's lifecycle (see ``session`` for the mapping)."""


class KpsAdapter(BaseAdapter):
    """The shell's verbs on a ``KpsSession``; its datagrams go out through ``send_many``."""

    def __init__(
        self,
        session: KpsSession,
        send_many: SendMany,
        settings: KpsSettings,
        on_cid: Callable[[KpsConnection, bytes, bool], None] | None,
        on_finished: Callable[[KpsConnection], None] | None,
        released: asyncio.Future[None] | None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.datagram_queue = settings.datagram_queue
        self._send_many = send_many
        self._on_cid = on_cid
        self._on_finished = on_finished
        self._released = released
        #: streams refused credit, until their buffer is down to half
        self._blocked: set[int] = set()
        self._credit: deque[ev.Event] = deque()
        self._ping_at: float | None = None
        self._closing = False
        self._release = False
        self.finished = False

    def attach(self, shell: CoreConnection) -> None:
        assert isinstance(shell, KpsConnection)
        # weak: a finished connection must be freed by reference counting alone
        self._shell = weakref.ref(shell)
        self.loop = asyncio.get_running_loop()

    @property
    def shell(self) -> KpsConnection:
        shell = self._shell()
        assert shell is not None, "the connection is gone"
        return shell

    def next_event(self) -> ev.Event | None:
        if self._credit:
            return self._credit.popleft()
        changes = self.session.cid_changes
        while changes:
            change = changes.popleft()
            if self._on_cid is not None:
                self._on_cid(self.shell, change.cid, change.added)
        event = self.session.next_event()
        if isinstance(event, ev.HandshakeCompleted) and self.settings.ping_interval > 0:
            self._ping_at = self.loop.time() + self.settings.ping_interval
        return event

    def transmit(self) -> None:
        session = self.session
        # consecutive datagrams to one address go out as one burst
        for addr, burst in groupby(session.datagrams_to_send(self.loop.time()), itemgetter(1)):
            self._send_many([data for data, _ in burst], addr)
        if self._blocked:
            low = self.settings.send_buffer // 2
            total = self.settings.connection_send_buffer
            if session.send_buffered_total() <= total - min(low, total // 2):
                for stream_id in [s for s in self._blocked if session.send_buffered(s) <= low]:
                    self._blocked.discard(stream_id)
                    self._credit.append(ev.CreditAvailable(stream_id))
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
        # a finished connection keeps no timer: its handle would keep it alive for the
        # draining period after the application dropped it
        if self.finished:
            return None
        deadline = self.session.deadline()
        if self._ping_at is None or self.session.closed is not None:
            return deadline
        return self._ping_at if deadline is None else min(deadline, self._ping_at)

    def handle_timer(self, now: float) -> None:
        if self._ping_at is not None and now >= self._ping_at - 0.001:
            self.session.ping()
            self._ping_at = now + self.settings.ping_interval
        self.session.handle_timer(now)

    def can_open_stream(self) -> bool:
        return self.session.can_open_stream()

    def open_stream(self) -> int:
        return self.session.open_stream()

    def accepted(self, stream_id: int) -> None:
        self.session.accepted()

    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        """Up to ``kps.send_buffer`` unsent bytes per stream and ``kps.connection_send_buffer``
        per connection."""
        session = self.session
        if end:
            session.send(stream_id, b"", fin=True)
            return 0
        if stream_id in self._blocked:
            return 0
        room = min(
            self.settings.send_buffer - session.send_buffered(stream_id),
            self.settings.connection_send_buffer - session.send_buffered_total(),
        )
        if room <= 0:
            self._blocked.add(stream_id)
            return 0
        chunk = data[:room]
        session.send(stream_id, chunk)
        return len(chunk)

    def reset(self, stream_id: int, code: int) -> None:
        self.session.reset(stream_id, code)

    def stop_sending(self, stream_id: int, code: int) -> None:
        self.session.stop_sending(stream_id, code)

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

    def abort(self, code: int, reason: str) -> None:
        self.session.close(code, reason)

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        self._ping_at = None
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
        if self.finished or self.session.closed is None:
            return
        self.finished = True
        self._blocked.clear()
        self.shell.forget()
        if self._on_finished is not None:
            self._on_finished(self.shell)

    @property
    def max_datagram_size(self) -> int | None:
        return self.session.max_datagram_size

    def send_datagram(self, data: bytes) -> None:
        self.session.send_datagram(data)


class KpsConnection(CoreConnection):
    """A KPS connection: one ``KpsSession`` on the event loop."""

    stream_class = KpsStream

    def __init__(
        self,
        session: KpsSession,
        send_many: SendMany,
        settings: KpsSettings,
        *,
        address: str = "",
        remote: RemoteIdentity | None = None,
        on_cid: Callable[[KpsConnection, bytes, bool], None] | None = None,
        on_finished: Callable[[KpsConnection], None] | None = None,
        released: asyncio.Future[None] | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.close_timeout = settings.close_timeout
        self._send_many = send_many
        self.remote_address: Address | None = None
        self._adapter_kps = KpsAdapter(
            session,
            send_many,
            settings,
            on_cid,
            on_finished,
            released,
        )
        super().__init__(self._adapter_kps, address=address, remote=remote)

    # -- fed by the socket ------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.datagrams_received([data], addr)

    def datagrams_received(self, datagrams: list[bytes], addr: Address) -> None:
        """A burst from the socket: all of it into the session, then one transmit."""
        self.session.receive_datagrams(datagrams, addr, self._loop.time())
        self.update()

    def start_client(self, addr: Address) -> None:
        self.remote_address = addr
        self.session.connect(addr, self._loop.time())
        self.update()

    # the listener drives a connection it just created
    _process = _transmit = CoreConnection.update

    @property
    def finished(self) -> bool:
        """True once the connection's state is released (no timer, out of the listener)."""
        return self._adapter_kps.finished

    def _finish_now(self) -> None:
        self._adapter_kps.finish_now()

    @property
    def transport_name(self) -> str:
        return "kps"

    def __repr__(self) -> str:
        state = "open" if self._error is None else f"closed ({self._error})"
        return f"<KpsConnection {self.address or self.remote_address} {state}>"
