"""The KPS connection: one ``KpsSession`` on the event loop, driven by the shared shell.

How the session is driven (datagram bursts, the send budget, keep-alive PINGs, releasing the
state early) is the adapter's (``adapter.KpsAdapter``); here are the public classes and the
hooks the listener and the dialer use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ...shell import CoreConnection, CoreStream
from ...stream import RemoteIdentity, fresh
from ..settings import KpsSettings
from .adapter import KpsAdapter, SendMany
from .session import Address, KpsSession

__all__ = ["KpsAdapter", "KpsConnection", "KpsStream", "SendMany", "fresh"]


class KpsStream(CoreStream):
    """One bidirectional QUIC stream with KPS's lifecycle (see ``session`` for the mapping)."""


class KpsConnection(CoreConnection):
    """A KPS connection: one ``KpsSession`` on the event loop."""

    stream_class = KpsStream
    transport_label = "kps"
    # slots, not the instance dict: with these the dict would hold 30 keys, and CPython 3.12
    # keeps an object's attributes in its compact shared-key form only up to 29 (30 and more
    # cost a 1.6 KB dict per idle connection; issue 17)
    __slots__ = (
        "_kps",
        "_send_many",
        "close_timeout",
        "on_cid",
        "on_finished",
        "remote_address",
        "session",
        "settings",
    )

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
        self.session, self.settings, self._send_many = session, settings, send_many
        #: the peer's UDP address (set by the dialer and the listener)
        self.remote_address: Address | None = None
        self.close_timeout = settings.close_timeout
        #: the listener's hooks: a connection id to route or retire, the state released
        self.on_cid, self.on_finished = on_cid, on_finished
        self._kps = KpsAdapter(session, send_many, settings, released)
        super().__init__(self._kps, address=address, remote=remote)

    def datagrams_received(self, datagrams: list[bytes], addr: Address) -> None:
        """A burst from the socket: all of it into the session, then one update."""
        self.session.receive_datagrams(datagrams, addr, self._loop.time())
        self.update()

    def start_client(self, addr: Address) -> None:
        self.remote_address = addr
        self.session.connect(addr, self._loop.time())
        self.update()

    def cid_changed(self, cid: bytes, added: bool) -> None:
        """The session added or retired a connection id: tell the listener's router."""
        if self.on_cid is not None:
            self.on_cid(self, cid, added)

    def released(self) -> None:
        """The adapter released the state (``forget``): tell the owner."""
        if self.on_finished is not None:
            self.on_finished(self)

    def _finish_now(self) -> None:
        self._kps.finish_now()
