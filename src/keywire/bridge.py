"""Splicing a keywire Stream to local byte sources and sinks (stdio, TCP, a child process).

The CLI's pipe, ``--exec``, ``--forward`` and ``--forward-local`` modes are all one splice with
different ends, so each direction is a small pump that propagates EOF as FIN and errors as a
reset, and the splice finishes when both directions have.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Awaitable, Callable

from .errors import Code, StreamError
from .stream import Stream

CHUNK = 65536

Reader = Callable[[], Awaitable[bytes]]
Writer = Callable[[bytes], Awaitable[None]]
Closer = Callable[[], Awaitable[None]]


async def pump_to_stream(read: Reader, stream: Stream) -> None:
    """Local source → stream; local EOF becomes FIN, a local failure a reset."""
    try:
        while chunk := await read():
            await stream.write(chunk)
    except (OSError, ConnectionError):
        stream.reset(Code.NETWORK_ERROR)
        raise
    await stream.close_write()


async def pump_from_stream(stream: Stream, write: Writer, close: Closer) -> None:
    """Stream → local sink; the peer's FIN closes the sink, a local failure stops the peer."""
    try:
        while chunk := await stream.read():
            await write(chunk)
    except (OSError, ConnectionError):
        stream.stop_sending(Code.CANCELLED)
        raise
    await close()


async def splice(stream: Stream, read: Reader, write: Writer, close: Closer) -> None:
    """Both directions at once; returns when the peer's side has ended and ours was sent.

    If the peer ends its side first, the local → stream direction is given no further wait
    (netcat semantics: the far end decides when the session is over).
    """
    outbound = asyncio.ensure_future(pump_to_stream(read, stream))
    try:
        await pump_from_stream(stream, write, close)
    finally:
        if not outbound.done():
            outbound.cancel()
        with contextlib.suppress(asyncio.CancelledError, StreamError, OSError, ConnectionError):
            await outbound


async def splice_tcp(stream: Stream, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    """Stream ↔ a TCP connection (``--forward`` / ``--forward-local``)."""

    async def read() -> bytes:
        return await reader.read(CHUNK)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def close() -> None:
        if writer.can_write_eof():
            writer.write_eof()

    outbound = asyncio.ensure_future(pump_to_stream(read, stream))
    try:
        await pump_from_stream(stream, write, close)
        with contextlib.suppress(StreamError, OSError, ConnectionError):
            await outbound  # TCP half-closes, so both directions end on their own
    finally:
        if not outbound.done():
            outbound.cancel()
        writer.close()


class StdinReader:
    """Reads stdin on a daemon thread so a blocked read never holds the process open."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdin.fileno() if fd is None else fd
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
            self._loop.call_soon_threadsafe(self._queue.put_nowait, data)
            if not isinstance(data, bytes) or not data:
                return

    async def read(self) -> bytes:
        item = await self._queue.get()
        self._room.release()
        if isinstance(item, BaseException):
            raise item
        return item


async def splice_stdio(stream: Stream) -> None:
    """Stream ↔ this process's stdin/stdout (``keywire dial`` and ``listen --stdio``)."""
    stdin = StdinReader()
    out = sys.stdout.buffer

    async def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    async def close() -> None:
        out.flush()

    await splice(stream, stdin.read, write, close)


async def splice_process(stream: Stream, command: str) -> int:
    """Stream ↔ a shell command's stdin/stdout (``--exec``); returns its exit status."""
    proc = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def read() -> bytes:
        return await stdout.read(CHUNK)

    async def write(data: bytes) -> None:
        stdin.write(data)
        await stdin.drain()

    async def close() -> None:
        stdin.close()

    outbound = asyncio.ensure_future(pump_to_stream(read, stream))
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await pump_from_stream(stream, write, close)
        await outbound
    finally:
        if not outbound.done():
            outbound.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return proc.returncode if proc.returncode is not None else -1
