"""The mux adapter: ``MuxSession`` over a pipe (``PipeAdapter``), driven by the shared shell.

All that is mux-specific here is the translation of the session's events into the shared
vocabulary and the forwarding of stream verbs; waiting, buffering and closing are the shell's,
the pipe's reader, writer and shutdown are ``keywire.pipeio``'s.
"""

from __future__ import annotations

import asyncio

from .. import events as ev
from ..adapter import CoreAdapter
from ..pipe import Pipe
from ..pipeio import PEER_END_GRACE, PipeAdapter
from ..shell import CoreConnection, CoreStream
from ..stream import ReceiveBuffer
from .frame import check_code
from .session import MuxConfig, MuxSession

__all__ = ["PEER_END_GRACE", "MuxAdapter", "MuxConnection", "MuxStream"]


class MuxStream(CoreStream):
    """One multiplexed stream."""

    @property
    def _buffer(self) -> ReceiveBuffer:
        return self._recv


class MuxAdapter(PipeAdapter, CoreAdapter):
    """The shell's verbs on a ``MuxSession`` (``CoreAdapter`` forwards those that map one to
    one); its bytes go over the pipe (``PipeAdapter``)."""

    core: MuxSession
    session: MuxSession

    def __init__(self, pipe: Pipe, session: MuxSession) -> None:
        super().__init__(pipe, session)
        self.session = session

    def next_event(self) -> ev.Event | None:
        return self.events.popleft() if self.events else self.session.next_event()

    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        if end:
            self.session.close_write(stream_id)
            return 0
        return 0 if self.output_full() else self.session.send(stream_id, data)

    def reset(self, stream_id: int, code: int) -> None:
        check_code(code)
        self.session.reset(stream_id, code)

    def stop_sending(self, stream_id: int, code: int) -> None:
        check_code(code)
        self.session.stop_sending(stream_id, code)

    def consumed(self, stream_id: int, n: int) -> None:
        self.session.consumed(stream_id, n, self.loop.time())
        self.transmit()  # a window update, if any, goes with the next write

    def abort(self, code: int, reason: str) -> None:
        self.session.abort(code, reason)


class MuxConnection(CoreConnection):
    """Many streams over one pipe. The dialer is the yamux client (odd stream ids)."""

    stream_class = MuxStream

    def __init__(
        self, pipe: Pipe, *, client: bool, config: MuxConfig | None = None, address: str = ""
    ) -> None:
        self._pipe = pipe
        now = asyncio.get_running_loop().time()
        self._session = MuxSession(client=client, config=config, now=now)
        super().__init__(MuxAdapter(pipe, self._session), address=address, remote=pipe.remote)
        self.update()  # the first ping (window auto-tuning) goes out

    # the writer task already coalesces output, so a verb's update runs at once (no extra
    # loop iteration per verb)
    update_soon = CoreConnection.update

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._session.stream_count} streams"
        return f"<MuxConnection {self.address or '?'} {state}>"

    @property
    def session(self) -> MuxSession:
        """The protocol core (for inspection: windows, rtt, stream count)."""
        return self._session
