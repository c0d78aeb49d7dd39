"""``StoreLifecycle``: a store stream as the shell sees it (sans-IO): events, credit, the ending.

The store core reports in ``keywire.events`` terms (``StreamData`` with ``fin`` for End,
``StreamReset`` for the peer's bare Reset, ``ReadsFailed`` for reads that fail while keeping what
was received (the peer's close(code), like QUIC's RESET_STREAM_AT) or for our own StopSending
reported after a restore, ``StopSendingReceived`` for its StopSending, ``ConnectionTerminated``
for a fatal error). ``next_event`` passes those on and adds what the shell needs beyond them:
``CreditAvailable`` once a refused write may retry, and the ending when the stream is simply
over (both directions done and confirmed: ``Code.NONE`` or the code of the peer's close; or our
own close or abort). The core's two store-only events (``keywire.store.ops``),
``FrameRejected`` and ``StoreTrouble``, are diagnostics, not stream semantics: they are logged
and kept in the ``rejections``/``troubles`` rings (``StoreStream`` shows them), so the shared
vocabulary does not grow members no other shell would handle. The adapter
(``keywire.store.adapter``) drives it.
"""

from __future__ import annotations

import logging
from collections import deque

from .. import events as ev
from ..errors import Code
from .core import StoreCore
from .ops import Event, FrameRejected, StoreTrouble

__all__ = ["StoreLifecycle"]

log = logging.getLogger("keywire.store")


class StoreLifecycle:
    """The shell's view of one ``StoreCore``: its events, write credit and ending."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core
        #: a write took nothing: ``CreditAvailable`` is owed once the window has room
        self.want_credit = False
        #: the ending was reported (or the shell learned it another way)
        self.ended = False
        #: a graceful close in progress: code, reason, and whether it waits for acks only
        self.closing: tuple[int, str, bool] | None = None
        self._raw: deque[Event] = deque()
        self._out: deque[ev.Event] = deque()
        #: the latest rejected frames and store troubles, for diagnostics
        self.rejections: deque[FrameRejected] = deque(maxlen=64)
        self.troubles: deque[StoreTrouble] = deque(maxlen=64)

    def next_event(self) -> ev.Event | None:
        """The next event for the shell, None when none is pending."""
        out = self._out
        while not out:
            if not self._raw:
                self._raw.extend(self.core.events())
                if not self._raw:
                    self._check_credit()
                    self._check_end()
                    break
            self._translate(self._raw.popleft())
        return out.popleft() if out else None

    def end(self, code: int, reason: str, *, remote: bool = False) -> None:
        """Report the ending (once)."""
        if not self.ended:
            self.ended = True
            self._out.append(ev.ConnectionTerminated(code, reason, remote))

    def begin_close(self, code: int, reason: str, *, writing: bool) -> None:
        """A graceful ``close(code)`` starts (``writing``: a write was in progress, so the shell
        resets the stream). Without a code and a write: StopSending(closed) beside the FIN, and
        the close waits until nothing of ours is unconfirmed. Otherwise our direction ends with
        Reset(code) after what was written plus a StopSending(code) the peer hears even after
        its End, and the close waits for the peer's acks only."""
        self.closing = (code, reason or "closed locally", code != Code.NONE or writing)
        if self.closing[2]:
            self.core.goodbye(code or Code.CLOSED)
        else:
            self.core.stop_sending(Code.CLOSED)

    def delivered(self) -> bool:
        """Nothing of ours is unconfirmed (after a coded close: the peer acked our frames)."""
        core = self.core
        if self.ended or core.failed is not None or core.finished:
            return True
        if self.closing is not None and self.closing[2]:
            return core.acked
        return core.quiescent

    def _translate(self, event: Event) -> None:
        if isinstance(event, FrameRejected):
            self.rejections.append(event)
            log.warning("store stream: rejected frame %d: %s", event.index, event.reason)
        elif isinstance(event, StoreTrouble):
            self.troubles.append(event)
            log.info("store stream: %s failed: %s", event.what, event.reason)
        elif isinstance(event, ev.ConnectionTerminated):  # a fatal error
            self.end(event.code, event.reason)
        else:
            self._out.append(event)

    def _check_credit(self) -> None:
        core = self.core
        if self.want_credit and (core.write_space > 0 or core.failed is not None):
            self.want_credit = False
            self._out.append(ev.CreditAvailable(0))

    def _check_end(self) -> None:
        core = self.core
        if self.ended or not core.finished:
            return
        if core.failed is not None:
            self.end(core.failed.wire_code, str(core.failed))
        elif self.closing is not None:
            self.end(self.closing[0], self.closing[1])
        elif (code := core.peer_reset_code) is not None:  # the peer's close(code) or abort(code)
            self.end(code, f"peer ended the stream (code {code})", remote=True)
        else:
            self.end(Code.NONE, "store stream ended")
