"""Drive Debian's Chromium or Firefox (web/test/driver.mjs); serve the browser tests' listener."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from keywire.errors import StreamError
from keywire.stream import Connection, Stream

WEB = Path(__file__).resolve().parents[2] / "web"
BLOCK = 262144
#: the browser configurations the matrix runs in (driver.mjs's KIND)
KINDS = ("chromium", "chromium-nomangle", "firefox")


def pattern(size: int, seed: int) -> bytes:
    """The tests' shared byte pattern (the same function as scenarios.js)."""
    block = bytes((j * 31 + (j >> 11) + seed) & 0xFF for j in range(BLOCK))
    whole, rest = divmod(size, BLOCK)
    return block * whole + block[:rest]


def require_browser(kind: str = "chromium") -> str:
    """The browser binary and node_modules for ``kind``, or a clear error naming what is missing."""
    if kind == "firefox":
        binary = os.environ.get("FIREFOX", "/usr/bin/firefox-esr")
        package, install = "puppeteer-core", "apt-get install -y firefox-esr"
    else:
        binary = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        package, install = "playwright-core", "apt-get install -y chromium"
    problems = []
    if not Path(binary).exists():
        problems.append(f"no browser at {binary} ({install})")
    if shutil.which("node") is None:
        problems.append("no node on PATH")
    if not (WEB / "node_modules" / package).is_dir():
        problems.append(f"{package} is not installed (npm ci --prefix web)")
    if problems:
        raise RuntimeError(f"browser tests ({kind}) need: " + "; ".join(problems))
    return binary


class Browser:
    """One headless browser tab; ``run(name, *args)`` awaits a scenario in the page."""

    def __init__(self, proc: asyncio.subprocess.Process, kind: str) -> None:
        self._proc = proc
        self.kind = kind
        self.version = ""
        self._browser_pid: int | None = None
        self._next = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def launch(cls, kind: str = "chromium", *origins: str) -> Browser:
        """Start driver.mjs for ``kind`` (fresh profile directory); closed again if it fails.

        ``origins``: the pages that will dial. Firefox gathers ICE candidates on loopback (and on
        any interface but the default route's) only for a page allowed to capture, so the
        driver grants them that permission in the fresh profile; every browser then reaches a
        listener on 127.0.0.1 and no packet leaves loopback.
        """
        require_browser(kind)
        if kind == "firefox" and not origins:
            raise ValueError(
                "Firefox reaches a loopback listener only from a page granted a "
                "media permission: Browser.launch('firefox', page_url)"
            )
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(WEB / "test" / "driver.mjs"),
            kind,
            *origins,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            cwd=str(WEB),
        )
        browser = cls(proc, kind)
        try:
            ready = await asyncio.wait_for(browser._call({}, expect_id=0), 60)
        except BaseException:
            await browser.close()
            raise
        browser.version = str(ready.get("version", ""))
        browser._browser_pid = ready.get("pid")
        return browser

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            fut = self._pending.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                if msg.get("ok"):
                    fut.set_result(msg.get("result"))
                else:
                    fut.set_exception(RuntimeError(f"in {self.kind}: {msg.get('error')}"))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"the {self.kind} driver exited"))

    async def _call(self, msg: dict[str, Any], expect_id: int | None = None) -> Any:
        loop = asyncio.get_running_loop()
        if expect_id is None:
            self._next += 1
            ident = self._next
            msg = {"id": ident, **msg}
            fut: asyncio.Future[Any] = loop.create_future()
            self._pending[ident] = fut
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(msg).encode() + b"\n")
            await self._proc.stdin.drain()
        else:
            fut = loop.create_future()
            self._pending[expect_id] = fut
        return await fut

    async def goto(self, url: str) -> None:
        await self._call({"goto": url})

    async def run(self, scenario: str, *args: Any, timeout: float = 60.0) -> Any:
        return await asyncio.wait_for(self._call({"run": scenario, "args": list(args)}), timeout)

    async def close(self) -> None:
        """Close the browser: the driver closes it; if the driver hangs, both are killed."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 15)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        if self._browser_pid is not None and self._proc.returncode != 0:
            # the driver died without closing it, and a BiDi browser outlives its driver
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._browser_pid, signal.SIGKILL)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class _NoCommand(EOFError):
    """A stream that ended (FIN) before its first newline; ``data`` is all it carried."""

    def __init__(self, data: bytes) -> None:
        super().__init__("stream ended before its command")
        self.data = data


class CommandApp:
    """The listener side of the browser scenarios: each stream's first line is a command.

    A stream that ends before any newline is echoed whole (the demo page's echo box).
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, conn: Connection) -> None:
        self._spawn(self._datagrams(conn))
        self._spawn(self._accept(conn))

    async def _accept(self, conn: Connection) -> None:
        async for stream in conn:
            self._spawn(self._stream(conn, stream))

    async def _datagrams(self, conn: Connection) -> None:
        with contextlib.suppress(Exception):
            while True:
                conn.send_datagram(await conn.receive_datagram())

    async def _line(self, stream: Stream) -> tuple[str, bytes]:
        buffer = b""
        while b"\n" not in buffer:
            chunk = await stream.read()
            if not chunk:
                raise _NoCommand(buffer)
            buffer += chunk
        line, rest = buffer.split(b"\n", 1)
        return line.decode(), rest

    async def _report(self, conn: Connection, text: str) -> None:
        out = await conn.open_stream()
        await out.write(text.encode() + b"\n")
        await out.close_write()

    async def _stream(self, conn: Connection, stream: Stream) -> None:
        with contextlib.suppress(StreamError, EOFError, ConnectionError):
            try:
                line, rest = await self._line(stream)
            except _NoCommand as whole:  # the demo page's echo box: no command line
                await stream.write(whole.data)
                await stream.close_write()
                return
            words = line.split()
            command = words[0]
            if command == "echo":
                data = rest or await stream.read()
                while data:
                    await stream.write(data)
                    data = await stream.read()
                await stream.close_write()
            elif command == "reset":
                stream.reset(int(words[1]))
            elif command == "expect-reset":
                try:
                    while await stream.read():
                        pass
                    self.seen.append(("expect-reset", "eof"))
                    await self._report(conn, "reset-seen eof")
                except StreamError as exc:
                    self.seen.append(("expect-reset", (exc.code, exc.remote)))
                    await self._report(conn, f"reset-seen {exc.code} {exc.remote}")
            elif command == "flood":
                try:
                    while True:
                        await stream.write(bytes(16384))
                except StreamError as exc:
                    self.seen.append(("flood", (exc.code, exc.remote)))
                    await self._report(conn, f"write-failed {exc.code} {exc.remote}")
            elif command == "sink":
                digest = hashlib.sha256(rest)
                size = len(rest)
                while chunk := await stream.read():
                    digest.update(chunk)
                    size += len(chunk)
                self.seen.append(("sink", size))
                await stream.write(digest.hexdigest().encode())
                await stream.close_write()
            elif command == "source":
                data = pattern(int(words[1]), int(words[2]))
                for at in range(0, len(data), 1 << 20):
                    await stream.write(data[at : at + (1 << 20)])
                await stream.close_write()
            elif command == "close-me":
                await conn.close(int(words[1]))
            elif command == "poison":
                await self._poison(conn, stream, words[1])

    async def _poison(self, conn: Connection, stream: Stream, kind: str) -> None:
        """Break KPS wire v1 toward the peer on purpose, beneath the engine."""
        from keywire.kps.webrtc import frames as f

        link = conn._link  # type: ignore[attr-defined]
        if kind == "data-after-fin":
            await stream.close_write()
            link.send(stream.id, f.encode_data(b"late"))
        elif kind == "overrun":
            chunk = f.encode_data(bytes(f.MAX_DATA_PAYLOAD))
            for _ in range((1 << 20) // f.MAX_DATA_PAYLOAD + 2):
                link.send(stream.id, chunk)
        elif kind == "bad-control":
            link.send(0, b"\x09")
        elif kind == "max-stream-data-huge":
            link.send(stream.id, b"\x04" + b"\xff" * 8)
        self.seen.append(("poison", kind))
        closed = await asyncio.wait_for(conn.wait_closed(), 20)
        self.seen.append(("poisoned", (kind, closed.code, closed.remote)))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
