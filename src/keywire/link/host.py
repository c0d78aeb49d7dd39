"""The host side of Link: register with relays, answer dial-backs, pair and reconnect devices.

One ``LinkHost`` per identity serves every relay it is registered with, so all relays share
the same address, pairing codes and paired devices. Each relay has an ``Uplink`` that keeps the
registration alive and re-registers with backoff (0.5 s doubling to 10 s) when the relay drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as WsClosed

from ..errors import HandshakeError
from ..identity import Identity
from ..options import as_number
from ..stream import RemoteIdentity
from . import codes
from .handshake import (
    DEFAULT_RECOVER_CONCURRENCY,
    CodeBook,
    HostContext,
    HostHandshake,
    PairingCode,
    RecoveryGate,
    recovery_scalar,
)
from .relayconn import RelayError, expect, open_socket, recv_json, register_message, send_json
from .session import LinkPipe
from .store import HostStore, RecoveryStore
from .wire import address_for_register_key, register_seed_from_static

log = logging.getLogger("keywire.link.host")

HANDSHAKE_TIMEOUT = 15.0
#: dial-backs still in their handshake, per relay; past it the oldest is dropped for a newcomer
MAX_DIALBACKS = 64
#: seconds an unauthenticated dial-back has from the relay's ``relay`` to a finished handshake
DIALBACK_TIMEOUT = 5.0
#: largest frame taken from a dial-back before it authenticates (handshake frames are small)
PRE_AUTH_MAX_FRAME = 4096
#: seconds between two "dropped a dial-back" log lines per relay
_DROP_LOG_EVERY = 10.0
_HOST_KEY_INFO = b"keywire link host x25519 v1"

PipeHandler = Callable[[LinkPipe], Awaitable[None]]


def dialback_timeout_setting(raw: object) -> float:
    """``link.dialback_timeout``: a number of seconds > 0 (text accepted from the CLI)."""
    value = as_number(raw)
    if value is None or not value > 0:
        raise ValueError(f"link.dialback_timeout is a number of seconds > 0, got {raw!r}")
    return float(value)


def dialback_url(url: str, link_id: str, ticket: object) -> str:
    """The relay URL with the link and its ticket in the query: the relay then counts this
    upgrade against the host (it owes the dial-back), not against the IP's anonymous share
    (Link v1 relays ignore the query)."""
    if not isinstance(ticket, str):
        return url
    parts = urlsplit(url)
    query = urlencode({"link": link_id, "ticket": ticket})
    return urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))


def host_static_from_identity(identity: Identity) -> X25519PrivateKey:
    """The host's X25519 key, derived from the identity's Ed25519 seed (one key file)."""
    raw = HKDF(hashes.SHA256(), 32, salt=None, info=_HOST_KEY_INFO).derive(identity.ed25519_seed)
    return X25519PrivateKey.from_private_bytes(raw)


async def _close_soon(ws: ClientConnection) -> None:
    """Close a dropped dial-back within a second, resetting it if the close stalls."""
    try:
        async with asyncio.timeout(1.0):
            await ws.close()
    except (TimeoutError, OSError, asyncio.CancelledError):
        ws.transport.abort()


class Uplink:
    """The registration on one relay, kept alive by a background task."""

    def __init__(self, host: LinkHost, url: str) -> None:
        self.host = host
        self.url = url
        self.registered = asyncio.Event()
        self.first_error: BaseException | None = None
        self._first = asyncio.get_running_loop().create_future()
        #: dial-back tasks not yet authenticated, oldest first (dicts keep insertion order)
        self._pending: dict[asyncio.Task[None], None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped = 0
        #: unauthenticated dial-backs held at once (``MAX_DIALBACKS``; tests lower it)
        self.max_dialbacks = MAX_DIALBACKS
        self._drop_logged = 0.0
        #: dial-backs dropped, in all, to make room for newer ones (for tests and status)
        self.dialbacks_dropped = 0
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.backoff = (0.5, 10.0)

    async def wait_first(self, timeout: float) -> None:
        """Wait for the first registration; raise why it failed."""
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._first)

    async def _run(self) -> None:
        delay = self.backoff[0]
        while True:
            try:
                ws = await open_socket(self.url, HANDSHAKE_TIMEOUT)
                try:
                    await send_json(
                        ws,
                        register_message(
                            self.host.signer, self.host.address, self.url, self.host.next_ts()
                        ),
                    )
                    await expect(ws, "registered", f"registering on {self.url}")
                    self.registered.set()
                    if not self._first.done():
                        self._first.set_result(None)
                    log.info("registered on %s", self.url)
                    delay = self.backoff[0]
                    await self._control(ws)
                finally:
                    self.registered.clear()
                    await ws.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: report the first, then keep retrying
                if not self._first.done():
                    self._first.set_exception(exc)
                log.info("relay %s: %s; re-registering in %.1f s", self.url, exc, delay)
            await asyncio.sleep(delay)
            delay = min(self.backoff[1], delay * 2)

    async def _control(self, ws: object) -> None:
        from websockets.asyncio.client import ClientConnection

        assert isinstance(ws, ClientConnection)
        while True:
            message = await recv_json(ws)
            kind = message.get("type")
            if kind == "relay" and isinstance(message.get("linkId"), str):
                if len(self._pending) >= self.max_dialbacks:
                    self._drop_oldest()
                task = asyncio.get_running_loop().create_task(
                    self._dial_back(message["linkId"], message.get("ticket"))
                )
                self._pending[task] = None
                self._tasks.add(task)
                task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._pending.pop(task, None)

    def _drop_oldest(self) -> None:
        """Cancel the oldest unauthenticated dial-back: a real client finishes its handshake
        within milliseconds, so only a silent one (an attacker's) ages to the front."""
        oldest = next(iter(self._pending))
        del self._pending[oldest]
        oldest.cancel()
        self._dropped += 1
        self.dialbacks_dropped += 1
        now = time.monotonic()
        if now - self._drop_logged >= _DROP_LOG_EVERY:
            log.warning(
                "%d unauthenticated dial-back(s) on %s dropped for newer ones "
                "(more than %d clients in their handshake)",
                self._dropped,
                self.url,
                self.max_dialbacks,
            )
            self._dropped, self._drop_logged = 0, now

    async def _dial_back(self, link_id: str, ticket: object) -> None:
        task = asyncio.current_task()
        try:
            async with asyncio.timeout(self.host.dialback_timeout):
                pipe = await self._handshake(link_id, ticket)
        except (HandshakeError, OSError, TimeoutError) as exc:
            log.info("link %s on %s failed: %s", link_id, self.url, str(exc) or "handshake timeout")
            return
        finally:
            if task is not None:
                self._pending.pop(task, None)  # authenticated or gone: no longer pending
        if pipe is not None:
            await self.host.serve(pipe)

    async def _handshake(self, link_id: str, ticket: object) -> LinkPipe | None:
        url = dialback_url(self.url, link_id, ticket)
        try:
            ws = await open_socket(url, HANDSHAKE_TIMEOUT)
        except RelayError as exc:  # say which relay, without the ticket
            raise RelayError(str(exc).replace(url, self.url)) from None
        machine = HostHandshake(self.host.ctx)
        # before the peer authenticates, take only handshake-sized frames (at most the
        # receive queue's 16 of them are buffered); the full size returns once it has
        full_size = ws.protocol.max_message_size
        ws.protocol.max_message_size = PRE_AUTH_MAX_FRAME
        try:
            accept: dict[str, object] = {"type": "accept", "linkId": link_id}
            if isinstance(ticket, str):
                accept["ticket"] = ticket
            await send_json(ws, accept)
            await expect(ws, "relaying", "accepting a link")
            while not machine.finished:
                try:
                    frame = await ws.recv()
                except WsClosed as exc:
                    raise RelayError(f"client left during the handshake ({exc})") from None
                if isinstance(frame, str):
                    raise HandshakeError("text frame during the Link handshake")
                outs = machine.receive(frame)
                if machine.channel is not None:
                    ws.protocol.max_message_size = full_size  # before the peer may send data
                for out in outs:
                    await ws.send(out)
        except asyncio.CancelledError:
            machine.abort()
            await _close_soon(ws)  # dropped or timed out: a short close, then reset
            raise
        except BaseException:
            machine.abort()
            await ws.close()
            raise
        if machine.channel is None:
            log.info("refused a client: %s", machine.refusal)
            await asyncio.sleep(0.2)  # let the refusal frame cross the relay first
            await ws.close()
            return None
        pipe = LinkPipe(
            ws, machine.channel, f"{self.url}~link:{self.host.address}", RemoteIdentity()
        )
        pipe.key_id = machine.key_id
        return pipe

    async def close(self) -> None:
        self._task.cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        if not self._first.done():
            self._first.cancel()


class LinkHost:
    """A host reachable through relays by its address."""

    def __init__(
        self,
        static: X25519PrivateKey,
        on_pipe: PipeHandler | None = None,
        store_dir: Path | None = None,
        *,
        recovery_key: str | bool | None = None,
        recover_concurrency: int = DEFAULT_RECOVER_CONCURRENCY,
    ) -> None:
        self.static = static
        self.store_dir = store_dir
        raw = static.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        self.signer = Ed25519PrivateKey.from_private_bytes(register_seed_from_static(raw))
        self.address = address_for_register_key(
            self.signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        self.tokens = HostStore(self.address, store_dir)
        loop = asyncio.get_running_loop()
        self.codebook = CodeBook(loop.time)
        self.ctx = HostContext(static, self.address, self.codebook, self.tokens)
        self.on_pipe = on_pipe
        self.uplinks: dict[str, Uplink] = {}
        self.sessions: set[LinkPipe] = set()
        #: seconds a dial-back has to authenticate (``link.dialback_timeout``)
        self.dialback_timeout = DIALBACK_TIMEOUT
        self._last_ts = 0
        #: set once a listen spec opened this host's pairing code (one code per host)
        self.pairing_code_opened = False
        #: a recovery key generated by ``set_recovery_key(True, save=False)``, not yet saved
        self.unsaved_recovery_key: str | None = None
        #: set once a listen spec scheduled showing the generated recovery key
        self.recovery_key_shown = False
        if recovery_key is not None:
            self.set_recovery_key(recovery_key, recover_concurrency)
        self._watch = loop.create_task(self._watch_revocations())

    @classmethod
    def from_identity(
        cls,
        identity: Identity,
        on_pipe: PipeHandler | None = None,
        store_dir: Path | None = None,
        *,
        recovery_key: str | bool | None = None,
        recover_concurrency: int = DEFAULT_RECOVER_CONCURRENCY,
    ) -> LinkHost:
        return cls(
            host_static_from_identity(identity),
            on_pipe,
            store_dir,
            recovery_key=recovery_key,
            recover_concurrency=recover_concurrency,
        )

    def next_ts(self) -> int:
        """Register timestamps are strictly increasing, even within one millisecond."""
        self._last_ts = max(int(time.time() * 1000), self._last_ts + 1)
        return self._last_ts

    async def add_relay(self, url: str, timeout: float = 10.0) -> Uplink:
        """Register on ``url`` and keep the registration alive; raises if the first fails."""
        if url in self.uplinks:
            return self.uplinks[url]
        uplink = Uplink(self, url)
        self.uplinks[url] = uplink
        try:
            await uplink.wait_first(timeout)
        except BaseException:
            await self.remove_relay(url)
            raise
        return uplink

    async def remove_relay(self, url: str) -> None:
        uplink = self.uplinks.pop(url, None)
        if uplink is not None:
            await uplink.close()

    def open_pairing_code(
        self, code: str | None = None, ttl: float | None = None, *, with_id: bool = False
    ) -> PairingCode:
        """A single-use code (random unless given); ``with_id`` gives it its own code id."""
        return self.codebook.open(code, ttl, with_id=with_id)

    def set_recovery_key(
        self,
        key: str | bool | None,
        max_concurrent: int = DEFAULT_RECOVER_CONCURRENCY,
        *,
        save: bool = True,
    ) -> str | None:
        """Turn recover mode (Link's mode 2) on or off; returns a newly generated key's text.

        A string is the key itself (normalised; fewer than 100 bits raise ``RecoveryKeyError``).
        ``True`` reuses this host's saved key or generates one (28 characters, 140 bits),
        saves it as ``w`` and returns its text, which is never stored; ``save=False`` keeps a
        new key in memory until ``save_recovery_key()`` (call it once the key was shown).
        ``None``/``False`` turns recover mode off. At most ``max_concurrent`` recover
        handshakes run at once; the rest are refused with ``FLk1 00 04``.
        """
        if key is None or key is False:
            self.ctx.recovery = None
            self.unsaved_recovery_key = None
            return None
        if key is True:
            saved = RecoveryStore(self.address, self.store_dir).load()
            if saved is not None:
                self.ctx.recovery = RecoveryGate(saved, max_concurrent)
                return None
            text = codes.generate_recovery_key()
            self.ctx.recovery = RecoveryGate(recovery_scalar(text), max_concurrent)
            self.unsaved_recovery_key = text
            if save:
                self.save_recovery_key()
            return text
        if not isinstance(key, str):
            raise codes.RecoveryKeyError(
                f"a recovery key is text or True, got {type(key).__name__}"
            )
        self.ctx.recovery = RecoveryGate.from_key(key, max_concurrent)
        self.unsaved_recovery_key = None
        return None

    def save_recovery_key(self) -> None:
        """Persist a key generated with ``save=False`` (as ``w``); later starts reuse it."""
        if self.unsaved_recovery_key is not None and self.ctx.recovery is not None:
            RecoveryStore(self.address, self.store_dir).save(self.ctx.recovery.w)
            self.unsaved_recovery_key = None

    async def serve(self, pipe: LinkPipe) -> None:
        self.sessions.add(pipe)
        try:
            if self.on_pipe is not None:
                await self.on_pipe(pipe)
            else:
                await pipe.closed.wait()
        finally:
            self.sessions.discard(pipe)

    def revoke(self, key_id: bytes | str) -> bool:
        """Forget a device; its live sessions end now and its next reconnect is refused."""
        found = self.tokens.revoke(key_id)
        self._end_revoked()
        return found

    def _end_revoked(self) -> None:
        for pipe in list(self.sessions):
            if pipe.key_id is not None and pipe.key_id not in self.tokens.tokens:
                pipe.abort()

    async def _watch_revocations(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                if self.tokens.reload():
                    self._end_revoked()

    async def close(self) -> None:
        self._watch.cancel()
        for url in list(self.uplinks):
            await self.remove_relay(url)
        for pipe in list(self.sessions):
            pipe.abort()
