"""The asyncio side of resumable streams (``keywire.nat.resume`` holds the rules and layouts).

``ResumableStream`` is what the application holds for a stream opened on the direct path when
both ends negotiated resume: it counts and retains through a ``ResumeState`` while on the direct
path and, after a cut, continues on a relayed stream, where it simply passes calls through.
``ResumeLayer`` (one per ``PathConnection``) keeps the streams by id, sends acknowledgement
records on one control stream per direct connection, and runs the resume handshake: the opener
re-opens each unfinished stream over the relay with ``KWR1``, the acceptor answers ``KWA1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ..errors import Code, ConnectionClosed, KeywireError, StreamError
from ..stream import Connection, Stream, fresh
from .resume import (
    ANSWER_SIZE,
    FIN,
    HEADER_SIZE,
    ID_SIZE,
    RECORD_SIZE,
    REQUEST_SIZE,
    Record,
    ResumeError,
    ResumeState,
    Status,
    decode_answer,
    decode_header,
    decode_record,
    decode_request,
    encode_answer,
    encode_header,
    encode_request,
)

log = logging.getLogger("keywire.nat.resume")

__all__ = ["ResumableStream", "ResumeLayer"]

#: a write waits for room for this much (or its rest, if less), then hands on all that fits
#: under the retained limit (so ``retained`` stays within ``max(limit, CHUNK)``)
CHUNK = 256 << 10
#: seconds an acceptor waits for the opener to resume a stream after a cut
RESUME_WAIT = 30.0
#: seconds the resume handshake itself may take
HANDSHAKE_TIMEOUT = 15.0
#: finished or reset streams remembered, to answer a late resume of them
TOMBSTONES = 4096

_Failure = (StreamError, ConnectionClosed)


class ResumableStream(Stream):
    """One stream that may move from the direct path to the relay without losing a byte."""

    def __init__(
        self, layer: ResumeLayer, state: ResumeState, inner: Stream, conn: Connection
    ) -> None:
        self.id = inner.id
        self.state = state
        self._layer = layer
        self._inner = inner
        self._conn = conn
        #: True once on the relay: calls pass through
        self.relayed = False
        #: set while between paths; resolves on the switch, fails if the stream cannot resume
        self._switching: asyncio.Future[None] | None = None
        #: True once the offsets were sent in a resume handshake: later old-path bytes are dropped
        self._frozen = False
        self._reset_code: int | None = None
        self._fin_before_switch = False
        #: the re-sending after a switch; writes on the new path wait for it
        self._resent: asyncio.Future[None] | None = None
        self._fin_resent = False
        #: its path ended on purpose (the peer closed the connection): nothing to resume
        self._abandoned = False
        self._room = asyncio.Event()

    def __repr__(self) -> str:
        where = "relay" if self.relayed else "direct"
        return f"<ResumableStream {self.state.stream_id.hex()[:8]} on {where}>"

    @property
    def resumable(self) -> bool:
        return not self.relayed and self._reset_code is None and not self._abandoned

    # -- path changes (driven by the layer) -----------------------------------------------------
    def went_down(self) -> None:
        if self._switching is None and self.resumable:
            self._switching = asyncio.get_running_loop().create_future()

    def freeze(self) -> int:
        """The ``recv_offset`` to send in the handshake; nothing read after it counts."""
        self.went_down()
        self._frozen = True
        return self.state.recv_offset

    def switch_to(self, stream: Stream, peer_offset: int, peer_fin: bool) -> None:
        """Continue on ``stream``: reads at once, writes once the bytes from the peer's offset
        (and the FIN, if written) went again. Both ends re-send at the same time, so the
        re-sending runs beside the reads (waiting for it before reading could deadlock on
        flow control)."""
        data, _fin = self.state.resend(peer_offset, peer_fin)
        # a FIN the peer already had is sent again too: the new stream must end, and the
        # peer discards it (it reads nothing more from this stream)
        fin = self._fin_resent = self.state.fin_written
        self._fin_before_switch = self.state.fin_received
        if self._fin_before_switch:
            self._layer.spawn(_drain(stream))
        self._inner, self.relayed = stream, True
        self.state = ResumeState(self.state.stream_id, opener=self.state.opener)  # frees bytes
        self._resent = asyncio.ensure_future(_send_again(stream, data, fin))
        self._resent.add_done_callback(lambda f: f.cancelled() or f.exception())
        if self._reset_code is not None:
            stream.reset(self._reset_code)
        self._settle(None)

    async def _after_resend(self) -> None:
        if self._resent is not None:
            await asyncio.shield(self._resent)

    def fail(self, error: StreamError) -> None:
        if self._switching is None:
            self._switching = asyncio.get_running_loop().create_future()
        self._settle(error)

    def _settle(self, error: StreamError | None) -> None:
        future = self._switching
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting
        if error is None:
            self._switching = None
        self._room.set()

    async def _wait_switch(self) -> None:
        future = self._switching
        if future is not None:
            try:
                await asyncio.shield(future)
            except StreamError as exc:
                raise fresh(exc) from None

    async def _failed(self, inner: Stream, exc: StreamError | ConnectionClosed) -> None:
        """An operation on ``inner`` failed: wait for the switch if the path died under it,
        else the error is the stream's own (a reset, a stop) and stands."""
        if inner is self._inner and not self.relayed:
            if not (self._conn.closed and self.resumable):
                if self._reset_code is None:
                    self._reset_code = getattr(exc, "code", Code.CANCELLED)
                self._layer.forget(self)
                raise exc
            self._layer.noticed_down(self._conn)
            if self._abandoned:
                raise exc
            self.went_down()
        await self._wait_switch()

    # -- the application's side -----------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        while True:
            if self.relayed:
                if self._fin_before_switch:
                    return b""  # the FIN came on the direct path; the new stream only ends
                return await self._inner.read(n)
            if self.state.fin_received:
                return b""
            await self._wait_switch()
            if self.relayed:
                continue
            inner = self._inner
            try:
                data = await inner.read(n)
            except _Failure as exc:
                await self._failed(inner, exc)
                continue
            if self._frozen or self.relayed:
                continue  # the peer sends these again on the new path
            now = asyncio.get_running_loop().time()
            if data:
                self.state.received(len(data), now)
            else:
                self.state.received_fin(now)
            self._layer.ack_soon(self)
            return data

    async def write(self, data: bytes) -> None:
        """Hand on as much as fits under the retained limit at once (all of a write that
        fits: one write on the direct stream, no copy); a write waits while there is no room
        for ``min(CHUNK, rest)``."""
        # kept until acknowledged: an immutable copy of anything but ``bytes``; a piece of a
        # larger write is one copy, shared by the retained bytes and the stream's send queue
        data = data if isinstance(data, bytes) else bytes(data)
        start = 0
        while True:
            rest = len(data) - start
            need = min(rest, CHUNK)
            while True:
                if self._switching is not None:
                    await self._wait_switch()
                if self.relayed:
                    await self._after_resend()
                    await self._inner.write(data[start:] if start else data)
                    return
                state = self.state
                if state.fin_written:
                    raise StreamError(Code.CLOSED, "write after close_write")
                if state.room(need):
                    break
                self._room.clear()
                await self._room.wait()
            take = max(need, min(rest, state.limit - state.retained))
            piece = data if take == len(data) else data[start : start + take]
            state.wrote(piece)
            inner = self._inner
            try:
                await inner.write(piece)
            except _Failure as exc:
                await self._failed(inner, exc)  # the piece is retained: the switch sends it
            start += take
            if start >= len(data):
                return

    async def close_write(self) -> None:
        await self._wait_switch()
        if self.relayed:
            await self._after_resend()
            if not self._fin_resent:
                await self._inner.close_write()
            return
        if self.state.fin_written:
            return
        self.state.wrote_fin()
        inner = self._inner
        try:
            await inner.close_write()
        except _Failure as exc:
            await self._failed(inner, exc)

    def reset(self, code: int = Code.RESET) -> None:
        if self._reset_code is None:
            self._reset_code = code
            self._layer.forget(self)
            if self._switching is not None and not self._frozen and not self.state.opener:
                # an acceptor between paths: the opener's resume will find the reset in the
                # tombstones; an opener's resume goes on and resets the new stream
                self.fail(StreamError(code, "the stream was reset locally"))
        self._inner.reset(code)

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        if not self.state.fin_received and self._reset_code is None:
            self._reset_code = code  # half abandoned: not resumed
            self._layer.forget(self)
        self._inner.stop_sending(code)


def _settled(task: asyncio.Task[None]) -> None:
    """Retrieve an acknowledgement write's outcome: one that failed went with its direct
    path, whose end the connection's pump handles (the resume handshake carries offsets)."""
    if not task.cancelled():
        task.exception()


async def _send_again(stream: Stream, data: bytes, fin: bool) -> None:
    if data:
        await stream.write(data)
    if fin:
        await stream.close_write()


async def _drain(stream: Stream) -> None:
    """Read a resumed stream whose FIN had already arrived: only its EOF may follow."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            if await stream.read():
                stream.stop_sending(Code.PROTOCOL_ERROR)


class _Link:
    """Per direct connection: its control stream (acknowledgements out) and the streams on it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dirty: set[ResumableStream] = set()
        self.wake = asyncio.Event()
        self.streams: set[ResumableStream] = set()
        #: the connection is gone (or the whole ``PathConnection``): the acker stops
        self.dead = False
        #: our control stream, once open and announced (records due at once go straight to it)
        self.control: Stream | None = None


class ResumeLayer:
    """The resumable streams of one ``PathConnection``."""

    def __init__(
        self,
        open_relay: Callable[[bool], Awaitable[Stream]],
        spawn: Callable[[Awaitable[None]], None],
        deliver: Callable[[Stream], None],
    ) -> None:
        #: opens a relayed stream; True: announce it as a resume first (see linkconn)
        self._open_relay = open_relay
        self.spawn = spawn
        #: hands the application a stream the peer opened (see ``_adopt``)
        self._deliver = deliver
        #: ids of streams first seen in a resume request (their header never arrived)
        self._adopted: OrderedDict[bytes, None] = OrderedDict()
        self.streams: dict[bytes, ResumableStream] = {}
        self._links: dict[int, _Link] = {}
        #: id → (recv_offset, reset code or None) of streams finished or reset here
        self._tombs: OrderedDict[bytes, tuple[int, int | None]] = OrderedDict()
        self._error: StreamError | None = None
        #: set by ``end``: nothing can be resumed any more (waiting acceptors stop waiting)
        self._ended = asyncio.Event()
        #: the application is closing the connection: a path ending now is no cut
        self.closing = False
        #: acknowledgement writes that had to wait (kept referenced until done)
        self._writes: set[asyncio.Task[None]] = set()

    # -- direct connections ---------------------------------------------------------------------
    def attach(self, conn: Connection) -> None:
        link = self._links[id(conn)] = _Link(conn)
        self.spawn(self._acker(link))

    def _link(self, conn: Connection) -> _Link | None:
        return self._links.get(id(conn))

    async def opened(self, conn: Connection, inner: Stream) -> Stream:
        """A stream we opened on ``conn``: announce its id, wrap it."""
        link = self._link(conn)
        if link is None:
            return inner
        stream_id = os.urandom(ID_SIZE)
        await inner.write(encode_header(stream_id))
        return self._wrap(link, ResumeState(stream_id, opener=True), inner)

    async def accepted(self, conn: Connection, inner: Stream) -> Stream | None:
        """A stream the peer opened on ``conn``: the application's (wrapped), or None for the
        peer's control stream (read here) or a bad header (reset)."""
        link = self._link(conn)
        if link is None:
            return inner
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                stream_id = decode_header(await inner.readexactly(HEADER_SIZE))
        except (KeywireError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("direct stream without a resume header: %s", exc)
            inner.reset(Code.PROTOCOL_ERROR)
            return None
        if stream_id is None:
            self.spawn(self._control(link, inner))
            return None
        if stream_id in self.streams or stream_id in self._tombs or stream_id in self._adopted:
            inner.reset(Code.PROTOCOL_ERROR)  # (adopted: it already continues on the relay)
            return None
        return self._wrap(link, ResumeState(stream_id, opener=False), inner)

    def _wrap(self, link: _Link, state: ResumeState, inner: Stream) -> ResumableStream:
        stream = ResumableStream(self, state, inner, link.conn)
        self.streams[state.stream_id] = stream
        link.streams.add(stream)
        return stream

    def forget(self, stream: ResumableStream, *, tomb: bool = True) -> None:
        stream_id = stream.state.stream_id
        if self.streams.get(stream_id) is stream:
            del self.streams[stream_id]
            if tomb:
                self._tombs[stream_id] = (stream.state.recv_offset, stream._reset_code)
                while len(self._tombs) > TOMBSTONES:
                    self._tombs.popitem(last=False)
        for link in self._links.values():
            link.streams.discard(stream)
            link.dirty.discard(stream)

    # -- acknowledgements -----------------------------------------------------------------------
    def ack_soon(self, stream: ResumableStream) -> None:
        link = self._link(stream._conn)
        if link is None or stream not in link.streams:
            return
        state, control = stream.state, link.control
        if (
            control is not None
            and not link.dead
            and (state.opener or not state.done)  # (the acceptor's DONE: the acker's)
            and state.ack_due(asyncio.get_running_loop().time()) == 0.0
        ):
            # due now: written in this turn, not by the acker in a later one, so the record
            # leaves in the transmit pass of the data the application writes in this turn
            # instead of in one of its own (records keep their order: writes hold a lock)
            link.dirty.discard(stream)
            self._write_now(control, state.take_record())
            return
        if stream not in link.dirty:
            link.dirty.add(stream)
            link.wake.set()
        elif stream.state.ack_due(asyncio.get_running_loop().time()) == 0.0:
            link.wake.set()

    def _write_now(self, control: Stream, record: bytes) -> None:
        """Write ``record`` at once: an eager task runs the write up to its first wait (a
        small write on an open stream usually has none)."""
        loop = asyncio.get_running_loop()
        task = asyncio.Task(control.write(record), loop=loop, eager_start=True)
        if task.done():
            _settled(task)
        else:
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            task.add_done_callback(_settled)

    async def _acker(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            control = await link.conn.open_stream()
            await control.write(encode_header(None))
            link.control = control
            while not link.dead:
                link.wake.clear()
                now = loop.time()
                records: list[bytes] = []
                wait: float | None = None
                for stream in list(link.dirty):
                    due = stream.state.ack_due(now)
                    if due is None:
                        link.dirty.discard(stream)
                    elif due == 0.0:
                        records.append(stream.state.take_record())
                        link.dirty.discard(stream)
                        if not stream.state.opener and stream.state.done:
                            self.forget(stream)  # DONE sent: only a tombstone is left
                    else:
                        wait = due if wait is None else min(wait, due)
                if records:
                    await control.write(b"".join(records))
                # a timer, not ``wait_for`` (which makes a task per wait): this runs every
                # ACK_BYTES of every busy stream
                timer = None if wait is None else loop.call_later(wait, link.wake.set)
                try:
                    await link.wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
        except KeywireError:
            return  # the direct connection ended: the resume handshake carries offsets now

    async def _control(self, link: _Link, control: Stream) -> None:
        try:
            while True:
                raw = await control.readexactly(RECORD_SIZE)
                record = decode_record(raw)
                stream = self.streams.get(record.stream_id)
                if stream is None or stream.relayed:
                    continue  # reset or finished here meanwhile
                stream.state.on_ack(record.recv_offset, record.flags)
                stream._room.set()
                if stream.state.opener and stream.state.peer_done:
                    self.forget(stream, tomb=False)
                elif not stream.state.opener and stream.state.done:
                    self.ack_soon(stream)  # owes the peer its DONE
        except ResumeError as exc:
            log.warning("bad acknowledgement on the direct path: %s", exc)
            link.conn.abort(Code.PROTOCOL_ERROR, str(exc))
        except (KeywireError, asyncio.IncompleteReadError):
            return

    # -- cuts and the resume handshake ----------------------------------------------------------
    def noticed_down(self, conn: Connection) -> None:
        """A stream saw ``conn`` end before the connection's pump did: handle it now."""
        if id(conn) in self._links:
            self.path_died(conn)

    def path_died(self, conn: Connection) -> None:
        """``conn`` is gone: openers resume their unfinished streams over the relay,
        acceptors wait for that (bounded)."""
        link = self._links.pop(id(conn), None)
        if link is None:
            return
        link.dead = True
        link.wake.set()
        error = conn.close_error
        deliberate = self.closing or (
            error is not None and error.remote and error.code == Code.NONE
        )
        for stream in list(link.streams):
            if deliberate:
                stream._abandoned = True  # the peer closed: its streams end as it sent them
                if stream._switching is not None:
                    stream.fail(StreamError(Code.CLOSED, "the peer closed the direct path"))
                continue
            if not stream.resumable:
                continue
            stream.went_down()
            if self._error is not None:
                stream.fail(self._error)
            elif stream.state.opener:
                self.spawn(self._resume(stream))
            else:
                self.spawn(self._await_resume(stream))

    async def _await_resume(self, stream: ResumableStream) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), RESUME_WAIT)
        if not stream.relayed and not stream._frozen:
            self.forget(stream, tomb=False)
            error = self._error or StreamError(
                Code.NETWORK_ERROR, "the direct path died; not resumed"
            )
            stream.fail(error)

    async def _resume(self, stream: ResumableStream) -> None:
        relayed: Stream | None = None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                relayed = await self._open_relay(True)
                offset = stream.freeze()
                await relayed.write(
                    encode_request(stream.state.stream_id, offset, stream.state.fin_received)
                )
                answer = decode_answer(await relayed.readexactly(ANSWER_SIZE))
                if answer.status == Status.OK:
                    stream.switch_to(relayed, answer.recv_offset, bool(answer.flags & FIN))
                    self.forget(stream, tomb=False)
                    return
            relayed.reset(Code.CANCELLED)
            if answer.status == Status.RESET:
                error = StreamError(answer.code, "peer reset the stream", remote=True)
            else:
                error = StreamError(Code.PROTOCOL_ERROR, "the peer could not resume the stream")
        except (KeywireError, OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            if relayed is not None:
                relayed.reset(Code.CANCELLED)
            error = StreamError(Code.NETWORK_ERROR, f"could not resume over the relay: {e!r}")
        self.forget(stream)
        stream.fail(error)

    async def answer(self, relayed: Stream) -> None:
        """The peer's resume request arrived on ``relayed``: answer with our offsets, switch."""
        stream: ResumableStream | None = None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                request = decode_request(await relayed.readexactly(REQUEST_SIZE))
                found = self.streams.get(request.stream_id)
                peer_fin = bool(request.flags & FIN)
                if found is None and self._adoptable(request.stream_id, request):
                    await self._adopt(relayed, request.stream_id)
                    return
                if found is None or found.state.opener or found.relayed:
                    await self._answer_tomb(relayed, request.stream_id)
                    return
                stream = found
                conn = stream._conn
                offset = stream.freeze()
                self.forget(stream, tomb=False)
                if id(conn) in self._links:
                    # the opener saw the path die first: it is dead for us too
                    conn.abort(Code.CANCELLED, "the peer resumed over the relay")
                await relayed.write(encode_answer(Status.OK, offset, stream.state.fin_received))
                stream.switch_to(relayed, request.recv_offset, peer_fin)
        except (KeywireError, OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            log.info("resume request failed: %r", e)
            relayed.reset(Code.PROTOCOL_ERROR)
            if stream is not None and not stream.relayed:
                stream.fail(StreamError(Code.NETWORK_ERROR, f"could not resume: {e!r}"))

    def _adoptable(self, stream_id: bytes, request: Record) -> bool:
        """A stream opened on the direct path as it died: its header never reached us (or
        is still being read), nothing came back (offset 0, no FIN), and we never finished it."""
        return (
            request.recv_offset == 0
            and not request.flags
            and stream_id not in self._tombs
            and stream_id not in self._adopted
        )

    async def _adopt(self, relayed: Stream, stream_id: bytes) -> None:
        """Take it as a new stream on the relay: the opener sends everything again from 0."""
        log.info(
            "stream %s opened as the direct path died: continues on the relay", stream_id.hex()[:8]
        )
        self._adopted[stream_id] = None
        while len(self._adopted) > TOMBSTONES:
            self._adopted.popitem(last=False)
        await relayed.write(encode_answer(Status.OK, 0, False))
        self._deliver(relayed)

    async def _answer_tomb(self, relayed: Stream, stream_id: bytes) -> None:
        tomb = self._tombs.get(stream_id)
        if tomb is None:
            await relayed.write(encode_answer(Status.UNKNOWN))
            await relayed.close_write()
            return
        offset, code = tomb
        if code is not None:
            await relayed.write(encode_answer(Status.RESET, code=code))
            await relayed.close_write()
            return
        # finished both ways here: everything was received and acknowledged
        await relayed.write(encode_answer(Status.OK, offset, True))
        await relayed.close_write()
        self.spawn(_drain(relayed))

    def end(self, error: StreamError) -> None:
        """The relayed session ended: streams between paths fail with it."""
        self._error = error
        self._ended.set()
        for link in self._links.values():
            link.dead = True  # no acknowledgements any more: the ackers stop
            link.wake.set()
        for stream in list(self.streams.values()):
            if stream._switching is not None:
                stream.fail(error)
