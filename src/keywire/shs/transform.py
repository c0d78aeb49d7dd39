"""The asyncio shell: ``shs`` as an address transform, and box-stream as a ``Pipe``.

Client section: ``shs:KEY[:SEED]`` (base64 of 32 bytes each; SEED replaces our identity, which
is how SSB invites work). Server: the identity's Ed25519 seed, ``options.authorize`` and
``options.handshake_timeout`` (each handshake read is bounded, so a client that connects and
says nothing is dropped). On any failure the server hangs up without another byte.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect

from ..address import Section, format_section
from ..errors import AddressError, Code, HandshakeError, StreamError
from ..options import Options
from ..pipe import Pipe
from ..plugin import Transform
from ..registry import Registry
from ..stream import Connection, RemoteIdentity
from .boxstream import BoxStreamDecoder, BoxStreamEncoder
from .handshake import SessionKeys, ShsClient, ShsHandshakeError, ShsServer

#: how much one write is encoded at a time (bounds memory; lets sending overlap encoding)
_WRITE_SLICE = 1 << 18
_READ_SIZE = 1 << 18


def decode_key(text: str, what: str = "key") -> bytes:
    """Strict base64 of exactly 32 bytes (an shs public key, seed or app key)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64: {text!r}") from None
    if len(raw) != 32:
        raise ValueError(f"{what} must be base64 of 32 bytes, got {len(raw)} bytes: {text!r}")
    return raw


def app_key_bytes(value: str | bytes) -> bytes:
    """``options.app_key`` as 32 raw bytes (it may be base64 text or bytes)."""
    if isinstance(value, bytes | bytearray):
        if len(value) != 32:
            raise ValueError(f"the shs app key must be 32 bytes, got {len(value)}")
        return bytes(value)
    return decode_key(value, "the shs app key")


def parse_section(section: Section) -> tuple[bytes, bytes | None]:
    """``shs:KEY[:SEED]`` → (server public key, invite seed or None)."""
    text = format_section(section)
    if not section.args or not section.args[0]:
        raise AddressError(text, len(section.name), "':KEY' (the server's base64 public key)")
    try:
        key = decode_key(section.args[0], "the shs server key")
    except ValueError as exc:
        raise AddressError(
            text, len(section.name) + 1, f"a base64 public key of 32 bytes ({exc})"
        ) from None
    seed: bytes | None = None
    if len(section.args) > 1 and section.args[1]:
        try:
            seed = decode_key(section.args[1], "the shs seed")
        except ValueError as exc:
            raise AddressError(
                text,
                len(section.name) + 2 + len(section.args[0]),
                f"a base64 seed of 32 bytes ({exc})",
            ) from None
    return key, seed


async def _exchange(pipe: Pipe, machine: ShsClient | ShsServer, timeout: float | None) -> None:
    """Read exactly what the machine waits for, bounded per read, until it stops needing more."""
    while not machine.done and machine.bytes_needed:
        need = machine.bytes_needed
        try:
            async with asyncio.timeout(timeout):
                data = await pipe.readexactly(need)
        except TimeoutError:
            raise machine.timed_out(timeout or 0) from None
        except asyncio.IncompleteReadError as exc:
            machine.receive_data(exc.partial)
            machine.receive_eof()
        except StreamError as exc:
            raise ShsHandshakeError(machine.side, 0, f"transport failed: {exc}") from None
        reply = machine.receive_data(data)
        if reply:
            await _send(pipe, machine.side, reply)


async def _send(pipe: Pipe, side: str, data: bytes) -> None:
    try:
        await pipe.write(data)
    except StreamError as exc:
        raise ShsHandshakeError(side, 0, f"transport failed: {exc}") from None


async def client_handshake(
    pipe: Pipe, app_key: bytes, seed: bytes, server_key: bytes, timeout: float | None = 5.0
) -> tuple[SessionKeys, bytes]:
    """Run shs1 as the client over ``pipe``; returns the keys and any early box-stream bytes."""
    machine = ShsClient(app_key, seed, server_key)
    try:
        await _send(pipe, "client", machine.initiate())
        await _exchange(pipe, machine, timeout)
    except BaseException:
        pipe.abort()
        raise
    return machine.keys, machine.take_leftover()


async def _ask(authorize: object, public_key: bytes) -> bool:
    if authorize is None:
        return True
    assert callable(authorize)
    verdict = authorize(public_key)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


async def server_handshake(
    pipe: Pipe, app_key: bytes, seed: bytes, authorize: object = None, timeout: float | None = 5.0
) -> tuple[SessionKeys, bytes]:
    """Run shs1 as the server; any failure hangs up silently and raises ``HandshakeError``."""
    machine = ShsServer(app_key, seed)
    try:
        await _exchange(pipe, machine, timeout)
        try:
            async with asyncio.timeout(timeout):
                allowed = await _ask(authorize, machine.client_public_key)
        except TimeoutError:
            raise machine.timed_out(timeout or 0) from None
        except Exception as exc:
            who = base64.b64encode(machine.client_public_key).decode()
            raise ShsHandshakeError(
                "server", 3, f"authorizing @{who}.ed25519 failed: {type(exc).__name__}: {exc}"
            ) from exc
        await _send(pipe, "server", machine.authorize(allowed))
    except BaseException:
        pipe.abort()
        raise
    return machine.keys, machine.take_leftover()


class BoxStreamPipe(Pipe):
    """A pipe whose bytes travel as box-stream frames over an inner pipe.

    EOF is authenticated: ``read`` returns ``b""`` only after the peer's goodbye; the inner pipe
    ending without one raises ``StreamError`` (network-error, "unexpected hangup").
    """

    eof_is_authenticated = True

    def __init__(self, inner: Pipe, keys: SessionKeys, early: bytes = b"") -> None:
        self._inner = inner
        self.keys = keys
        self.peer = inner.peer
        self.remote = RemoteIdentity(public_key=keys.remote_public_key)
        self._encoder = BoxStreamEncoder(keys.encrypt_key, keys.encrypt_nonce)
        self._decoder = BoxStreamDecoder(keys.decrypt_key, keys.decrypt_nonce)
        self._pending = b""
        self._offset = 0
        self._early = early
        self._write_lock = asyncio.Lock()
        self._write_closed = False

    @property
    def inner(self) -> Pipe:
        return self._inner

    async def read(self, max_bytes: int = 65536) -> bytes:
        while self._offset >= len(self._pending):
            if self._decoder.finished:
                await self._both_ended()
                return b""
            if self._decoder.error is not None:
                self._inner.abort()
                raise self._decoder.error
            if self._early:
                data, self._early = self._early, b""
            else:
                data = await self._inner.read(_READ_SIZE)
            try:
                if not data:
                    self._decoder.receive_eof()
                    return b""
                self._pending, self._offset = self._decoder.receive_data(data), 0
                if self._decoder.finished and not self._pending:
                    await self._both_ended()
                    return b""
            except StreamError as exc:
                if exc.code != Code.NETWORK_ERROR:
                    self._inner.abort()  # a forged frame: nothing more from this peer counts
                raise
        start, available = self._offset, len(self._pending) - self._offset
        if start == 0 and (max_bytes < 0 or max_bytes >= available):
            self._offset = available
            return self._pending
        take = available if max_bytes < 0 else min(max_bytes, available)
        self._offset = start + take
        return self._pending[start : start + take]

    async def write(self, data: bytes) -> None:
        if self._write_closed:
            raise StreamError(Code.CLOSED, "write after close_write")
        view = memoryview(data)
        async with self._write_lock:
            for start in range(0, len(view), _WRITE_SLICE):
                if self._write_closed:
                    raise StreamError(Code.CLOSED, "write after close_write")
                await self._inner.write(self._encoder.encode(view[start : start + _WRITE_SLICE]))

    async def close_write(self) -> None:
        """Send the goodbye (the authenticated EOF), then half-close the inner pipe.

        A carrier without half-close (WebSocket) stays open until the peer's goodbye has
        arrived too, so its reply is not lost; the goodbye already told the peer we are done.
        """
        if self._write_closed:
            return
        self._write_closed = True
        async with self._write_lock:
            await self._inner.write(self._encoder.goodbye())
        if getattr(self._inner, "supports_half_close", True):
            await self._inner.close_write()
        elif self._decoder.finished:
            await self._inner.close()

    async def _both_ended(self) -> None:
        if self._write_closed and not getattr(self._inner, "supports_half_close", True):
            with contextlib.suppress(Exception):
                await self._inner.close()

    def abort(self) -> None:
        self._write_closed = True
        self._inner.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.close_write()
        await self._inner.close()


class ShsTransform(Transform):
    """``shs``: secret handshake, then box-stream (byte-compatible with multiserver's shs)."""

    name = "shs"

    async def client(self, pipe: Pipe, section: Section, options: Options, address: str) -> Pipe:
        server_key, seed = parse_section(section)
        if seed is None:
            seed = options.need_identity().ed25519_seed
        keys, early = await client_handshake(
            pipe, app_key_bytes(options.app_key), seed, server_key, options.handshake_timeout
        )
        return BoxStreamPipe(pipe, keys, early)

    async def server(self, pipe: Pipe, section: Section, options: Options, address: str) -> Pipe:
        keys, early = await server_handshake(
            pipe,
            app_key_bytes(options.app_key),
            options.need_identity().ed25519_seed,
            options.authorize,
            options.handshake_timeout,
        )
        return BoxStreamPipe(pipe, keys, early)

    def check(self, section: Section) -> None:
        parse_section(section)

    def announce(self, section: Section, options: Options) -> Section:
        """``shs:<our base64 public key>``; a listen spec naming another key is an error."""
        own = options.need_identity().shs_id
        if section.args and section.args[0] and section.args[0] != own:
            raise AddressError(
                format_section(section),
                len(section.name) + 1,
                f"this identity's key {own} (or no key) in a listen spec",
            )
        return Section(self.name, (own,))

    def peer_section(
        self, section: Section, result: Pipe | Connection, options: Options
    ) -> Section:
        """``shs:<the client's key>``: what the handshake proved about the peer."""
        key = result.remote.shs_id if isinstance(result, Pipe) else None
        return Section(self.name, (key,)) if key else self.announce(section, options)


def register(registry: Registry) -> None:
    registry.add_transform(ShsTransform())


__all__ = [
    "BoxStreamPipe",
    "HandshakeError",
    "ShsTransform",
    "app_key_bytes",
    "client_handshake",
    "decode_key",
    "parse_section",
    "register",
    "server_handshake",
]
