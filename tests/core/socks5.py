"""A minimal SOCKS5 CONNECT server (RFC 1928, no auth) for testing the onion transport."""

from __future__ import annotations

import asyncio
import contextlib
import struct


class Socks5Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Socks5Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, n = await reader.readexactly(2)
            await reader.readexactly(n)
            writer.write(b"\x05\x00")
            _, _, _, atyp = await reader.readexactly(4)
            if atyp == 3:
                (length,) = await reader.readexactly(1)
                host = (await reader.readexactly(length)).decode()
            elif atyp == 1:
                host = ".".join(str(b) for b in await reader.readexactly(4))
            else:
                writer.write(b"\x05\x08\x00\x01" + bytes(6))
                writer.close()
                return
            (port,) = struct.unpack(">H", await reader.readexactly(2))
            self.requests.append((host, port))
            try:
                up_r, up_w = await asyncio.open_connection(
                    "127.0.0.1" if host.endswith(".onion") else host, port
                )
            except OSError:
                writer.write(b"\x05\x05\x00\x01" + bytes(6))
                writer.close()
                return
            writer.write(b"\x05\x00\x00\x01" + bytes(6))
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
            up_w.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            if w.can_write_eof():
                w.write_eof()
