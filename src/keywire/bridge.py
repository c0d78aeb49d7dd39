"""Splicing a keywire Stream to local byte sources and sinks (stdio, TCP, a child process).

The CLI's pipe, ``--exec``, ``--forward`` and ``--forward-local`` modes are all one splice with
different ends. Netcat semantics: each direction ends on its own — local EOF becomes FIN once
every byte of it was written, the peer's FIN closes the local sink once everything before it
was written out — and the splice finishes when both directions have. A direction that fails
makes the whole splice fail (``SpliceError``, with the byte counts), so a truncated transfer is
never reported as a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from .errors import Code, CodedError, ConnectionClosed, KeywireError, StreamError
from .stream import Stream

#: bytes per read of a local source: large enough that the per-chunk work (a hand-off, a
#: stream write, the byte count) is small next to moving the bytes
CHUNK = 1 << 18

Reader = Callable[[], Awaitable[bytes]]
Writer = Callable[[bytes], Awaitable[None]]
Closer = Callable[[], Awaitable[None]]

#: what a failed stream or connection raises (as opposed to a failed local end)
REMOTE_ERRORS = (StreamError, ConnectionClosed)


@dataclass
class Transfer:
    """Bytes moved by one splice, and which directions completed; read live for progress."""

    #: bytes written to the stream (local → peer)
    sent: int = 0
    #: bytes written to the local sink (peer → local)
    received: int = 0
    #: our FIN went out after every local byte
    sent_done: bool = False
    #: the peer's FIN arrived and everything before it was written out locally
    received_done: bool = False
    #: size of the local source when known (a regular file on stdin), for an ETA
    expected: int | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def complete(self) -> bool:
        return self.sent_done and self.received_done

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class SpliceError(KeywireError):
    """A direction of a splice failed; ``transfer`` says how far each got."""

    def __init__(self, transfer: Transfer, cause: BaseException, direction: str) -> None:
        self.transfer = transfer
        self.cause = cause
        self.direction = direction
        self.code: Code | None = cause.code if isinstance(cause, CodedError) else None
        self.remote = bool(getattr(cause, "remote", False))
        text = str(cause) or type(cause).__name__
        super().__init__(f"{direction} failed: {text}")


async def pump_to_stream(read: Reader, stream: Stream, t: Transfer) -> None:
    """Local source → stream; local EOF becomes FIN, a local failure a reset."""
    try:
        while chunk := await read():
            await stream.write(chunk)
            t.sent += len(chunk)
    except OSError:
        stream.reset(Code.NETWORK_ERROR)
        raise
    await stream.close_write()
    t.sent_done = True


async def pump_from_stream(stream: Stream, write: Writer, close: Closer, t: Transfer) -> None:
    """Stream → local sink; the peer's FIN closes the sink, a local failure stops the peer."""
    try:
        while chunk := await stream.read():
            await write(chunk)
            t.received += len(chunk)
        await close()
    except OSError:
        stream.stop_sending(Code.CANCELLED)
        raise
    t.received_done = True


def _failure(task: asyncio.Future[object]) -> BaseException | None:
    if not task.done() or task.cancelled():
        return None
    return task.exception()


async def splice(
    stream: Stream,
    read: Reader,
    write: Writer,
    close: Closer,
    transfer: Transfer | None = None,
    ended: Awaitable[object] | None = None,
    keep_sending: bool = True,
) -> Transfer:
    """Both directions at once, each ending on its own; returns when both completed.

    Raises ``SpliceError`` when either failed. When the peer's side fails (reset, connection
    lost) the local → peer direction is abandoned, since the session cannot complete. ``ended``
    (the connection's end) stops waiting on a local source that can no longer be delivered.
    When the local sink fails, the local → peer direction goes on (a child that stopped
    reading may still answer) unless ``keep_sending`` is False.
    """
    t = transfer if transfer is not None else Transfer()
    outbound: asyncio.Future[object] = asyncio.ensure_future(pump_to_stream(read, stream, t))
    inbound: asyncio.Future[object] = asyncio.ensure_future(
        pump_from_stream(stream, write, close, t)
    )
    watch = asyncio.ensure_future(ended) if ended is not None else None
    lost: BaseException | None = None
    try:
        pending: set[asyncio.Future[object]] = {outbound, inbound}
        if watch is not None:
            pending.add(watch)
        while outbound in pending or inbound in pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if watch in done and outbound in pending:
                # the connection is over while our source still had bytes to give
                lost = ConnectionClosed(Code.CLOSED, "the connection ended before our input did")
                outbound.cancel()
            failed = _failure(inbound)
            doomed = isinstance(failed, REMOTE_ERRORS) or (failed is not None and not keep_sending)
            if doomed and outbound in pending:
                outbound.cancel()
                with contextlib.suppress(KeywireError):
                    stream.reset(Code.CANCELLED)
    finally:
        for task in (outbound, inbound, watch):
            if task is not None and not task.done():
                task.cancel()
        for task in (outbound, inbound, watch):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        t.ended = time.monotonic()
    for task, direction in ((inbound, "receiving"), (outbound, "sending")):
        error = _failure(task)
        if error is not None:
            raise SpliceError(t, error, direction)
    if not t.complete:
        raise SpliceError(t, lost or ConnectionClosed(Code.CLOSED, "stopped"), "sending")
    return t


def asyncio_io(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[Reader, Writer]:
    """``splice``'s read and write over an asyncio reader and writer (a TCP connection, a
    child's stdout and stdin); a write waits until the writer drained."""

    async def read() -> bytes:
        return await reader.read(CHUNK)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    return read, write


async def splice_tcp(
    stream: Stream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    transfer: Transfer | None = None,
) -> Transfer:
    """Stream ↔ a TCP connection (``--forward`` / ``--forward-local``); TCP half-closes, so
    both directions end on their own."""

    read, write = asyncio_io(reader, writer)

    async def close() -> None:
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()

    try:
        return await splice(stream, read, write, close, transfer)
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await writer.wait_closed()


class StdinReader:
    """Reads stdin without ever blocking the event loop for long.

    A regular file is read in the loop (a read of it never waits on anyone); anything else
    (a pipe, a terminal, a socket) is read on a daemon thread, so a blocked read never holds
    the process open (a terminal may never end).
    """

    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._direct = _is_regular(self._fd)
        if self._direct:
            return
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue(4)
        self._room = threading.Semaphore(4)
        threading.Thread(target=self._run, name="keywire-stdin", daemon=True).start()

    def _run(self) -> None:
        while True:
            self._room.acquire()
            try:
                data: bytes | BaseException = os.read(self._fd, CHUNK)
            except OSError as exc:
                data = exc
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, data)
            except RuntimeError:  # the loop is gone: the process is ending
                return
            if not isinstance(data, bytes) or not data:
                return

    async def read(self) -> bytes:
        if self._direct:
            await asyncio.sleep(0)  # let the other direction and timers run between chunks
            return os.read(self._fd, CHUNK)
        item = await self._queue.get()
        self._room.release()
        if isinstance(item, BaseException):
            raise item
        return item


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def remaining_size(fd: int) -> int | None:
    """Bytes left to read on ``fd`` when it is a regular file (for an ETA), else None."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(0, info.st_size - os.lseek(fd, 0, os.SEEK_CUR))
    except OSError:
        return None


async def splice_stdio(
    stream: Stream, transfer: Transfer | None = None, ended: Awaitable[object] | None = None
) -> Transfer:
    """Stream ↔ this process's stdin/stdout (``keywire dial`` and ``listen --stdio``)."""
    stdin = StdinReader()
    out = sys.stdout.buffer

    async def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    async def close() -> None:
        out.flush()

    # once stdout is broken the session has failed: stdin (maybe a terminal) is not awaited
    return await splice(stream, stdin.read, write, close, transfer, ended, keep_sending=False)


async def splice_process(
    stream: Stream,
    command: str,
    env: Mapping[str, str] | None = None,
    transfer: Transfer | None = None,
) -> int:
    """Stream ↔ a shell command's stdin/stdout (``--exec``); returns its exit status.

    ``env`` is added to this process's environment for the child.
    """
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env else None,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    read, write = asyncio_io(stdout, stdin)

    async def close() -> None:
        stdin.close()
        with contextlib.suppress(OSError):
            await stdin.wait_closed()

    try:
        await splice(stream, read, write, close, transfer)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return proc.returncode if proc.returncode is not None else -1
