"""``StoreAdapter``: the shared shell's adapter for a store stream (``StoreCore`` + a backend).

A store stream has no bytes to move, only store operations: ``transmit`` hands the puts and gets
``StoreCore.poll`` wants to ``BackendOps`` (``keywire.store.backendops``), which runs them and
feeds each outcome back before asking the shell for an update. What the shell sees of the core
(events, write credit, the ending, the close policy) is ``StoreLifecycle``
(``keywire.store.lifecycle``, sans-IO). Everything else (waiters, the receive buffer, write
backpressure, the one timer, close and abort) is the shell's (``keywire.shell.OneStreamConnection``,
via ``keywire.store.stream.StoreConnection``). The whole mapping: docs/shell.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from .. import events as ev
from ..adapter import BaseAdapter, OneStreamVerbs
from ..errors import Code, StreamError
from .backendops import BackendOps
from .backends import StoreBackend
from .core import StoreCore
from .lifecycle import StoreLifecycle

if TYPE_CHECKING:
    from ..shell import CoreConnection

log = logging.getLogger("keywire.store")

_MAX_CODE = 0xFFFFFFFF


class StoreAdapter(OneStreamVerbs, BaseAdapter):
    """Runs one ``StoreCore``'s operations against ``backend`` for the shell."""

    def __init__(self, core: StoreCore, backend: StoreBackend) -> None:
        self.core = core
        self.ops = BackendOps(core, backend, self._outcome)
        self.life = StoreLifecycle(core)
        #: whether the ending puts the last Reset/StopSending (``StoreStream.abort`` alone: no)
        self.notify = True

    def attach(self, shell: CoreConnection) -> None:
        super().attach(shell)
        # not ``update()``: the shell's stream does not exist yet (restored bytes wait for it)
        shell.update_soon()

    def _outcome(self) -> None:
        """An operation's outcome was fed to the core: outcomes of one loop iteration share
        one update (one poll)."""
        self.shell.update_soon()

    # -- driving --------------------------------------------------------------------------------
    def next_event(self) -> ev.Event | None:
        return self.life.next_event()

    def transmit(self) -> None:
        """Start the operations the core wants now."""
        if not self.life.ended:
            try:
                ops = self.core.poll(self.loop.time())
            except Exception as exc:  # a bug must end the stream visibly, not hang it
                log.exception("store stream engine failed")
                self.core.fail(StreamError(Code.INTERNAL_ERROR, f"store stream engine: {exc!r}"))
                ops = []
            self.ops.start(ops)

    def get_timer(self) -> float | None:
        return None if self.life.ended else self.core.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Nothing to do here: the update that follows polls the core, which builds what is due."""

    # -- the shell's verbs ----------------------------------------------------------------------
    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        if end:
            self.core.close_write()
            return 0
        taken = self.core.write(data)
        if not taken:
            self.life.want_credit = True
        return taken

    def reset(self, stream_id: int, code: int) -> None:
        self.core.reset(_code(code))

    def stop_sending(self, stream_id: int, code: int) -> None:
        self.core.stop_sending(_code(code))

    def consumed(self, stream_id: int, n: int) -> None:
        self.core.consumed(n)
        self.shell.update_soon()  # gets may have paused on a full read buffer

    def delivered(self) -> bool:
        return self.life.delivered()

    def close(self, code: int, reason: str) -> None:
        self.life.end(code, reason or "closed locally")

    def abort(self, code: int, reason: str) -> None:
        self.life.end(code, reason or "aborted locally")

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        """Cancel every operation; after our own close or abort, put the last Reset and
        StopSending in the background (``notify``); then close the backend if the connection
        owns it (``BackendOps.stop``)."""
        self.life.ended = True
        notify = self.notify and not event.remote
        code = event.code or Code.CLOSED
        return self.ops.stop(self.core.last_words(code, self.loop.time()) if notify else [])


def _code(code: int) -> int:
    """A stream code the store's frames carry (4 bytes); ``ValueError`` for any other."""
    if not 0 <= code <= _MAX_CODE:
        raise ValueError(f"a store stream carries codes 0..{_MAX_CODE}, not {code}")
    return code
