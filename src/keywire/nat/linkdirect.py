"""The direct path for Link sessions: negotiate, punch in the background, bind, switch.

Negotiation rides Link's envelope frames (sealed kind ``{``), which a keywire host or client
that does not know them drops unread: an old peer is never disturbed and the mux streams the
application sees are untouched. Every message is one JSON envelope
``{"t":"kw.direct","v":1,"op":…,"n":EXCHANGE}``:

* client → ``hello``: I can punch (exchange ``n``);
* host → ``ready`` with a 32-byte ``token`` (base64url), or ``no`` (disabled, or too many
  exchanges on this session);
* both → ``punch`` with ``d`` (base64url bytes): the byte stream ``keywire.nat.punch`` runs on;
* either → ``down``: the direct path this side used is gone;
* either → ``resume`` with ``k``: "the ``k``-th relayed stream I open (counting from 1)
  carries a resume request" (``keywire.nat.linkconn``), sent just before opening it.

``hello`` and ``ready`` carry ``"resume":1`` when that side offers resumable streams; both must,
else streams stay on their path as before (``keywire.nat.resume``).

Once ``punch_as_client`` has a direct KPS connection (pinned by the host's certhash, which came
through the sealed channel), the client opens one stream on it and writes ``KWD1 ‖ token``: the
host learns which session the connection belongs to (a connection without a live token is
aborted) and both sides attach it to their ``PathConnection``. Exchanges are bounded
(``exchanges``, default 3, with growing pauses); a path that dies may be punched again within
that bound, never more.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..errors import Code, KeywireError, StreamError
from ..identity import Identity
from ..kps.quic.connection import KpsConnection
from ..kps.quic.listener import KpsListener
from ..kps.settings import KpsSettings
from ..options import as_number, setting_value
from ..stream import Connection, ReceiveBuffer, Stream
from .guess import GuessBudget, GuessSettings
from .holepunch import PunchError, format_addr
from .linkconn import PathConnection
from .punch import ClientStart, PunchSettings, punch_as_client, punch_as_host
from .stun import Address
from .stunio import parse_host_port, resolve_server

log = logging.getLogger("keywire.nat.link")

__all__ = [
    "DirectHost",
    "DirectSettings",
    "direct_settings",
    "start_client",
]

TAG = "kw.direct"
VERSION = 1
MAGIC = b"KWD1"
TOKEN_SIZE = 32
#: punch bytes buffered per exchange before the peer is cut off (messages are ≤ 4 KiB)
MAX_BUFFERED = 64 << 10
#: tasks nobody awaits, kept referenced until they finish
_background: set[asyncio.Task[None]] = set()


class LinkPipe(Protocol):
    """What this module needs of ``keywire.link.session.LinkPipe`` (nat sits below link)."""

    peer: str
    on_envelope: Callable[[bytes], None] | None

    async def send_envelope(self, plaintext: bytes) -> None: ...


@dataclasses.dataclass(frozen=True)
class DirectSettings:
    """``link.direct*`` settings (docs/nat.md)."""

    enabled: bool = True
    #: ``HOST[:PORT]`` of a STUN server; None: the relay's host, port 3478
    stun: str | None = None
    #: whole punch exchanges per session (each has ``punch.attempts`` rounds)
    exchanges: int = 3
    #: pause before exchange 2, 3, … (doubling from this)
    backoff: float = 10.0
    #: seconds without any packet before a direct path counts as dead (QUIC idle timeout)
    idle: float = 6.0
    #: seconds the client waits for the host's ``ready`` (an old host never answers)
    ready_timeout: float = 10.0
    #: offer resumable streams (direct streams continue over the relay after a cut)
    resume: bool = True
    punch: PunchSettings = dataclasses.field(default_factory=PunchSettings)


def _number(raw: object, name: str, *, minimum: float, whole: bool = False) -> float:
    value = as_number(raw)
    if value is None or value < minimum:
        raise ValueError(f"{name} is a number >= {minimum:g}, got {raw!r}")
    if whole and float(value) != int(value):
        raise ValueError(f"{name} is a whole number, got {raw!r}")
    return float(value)


def direct_settings(extra: dict[str, Any]) -> DirectSettings:
    """The ``link.direct``/``link.direct_*``/``link.stun`` values of ``Options.extra``,
    checked before anything opens (the registry already refused unknown ``link.*`` keys)."""
    s = DirectSettings()
    enabled = bool(setting_value("link.direct", bool, extra.get("link.direct", True)))
    resume = bool(setting_value("link.direct_resume", bool, extra.get("link.direct_resume", True)))
    stun = extra.get("link.stun")
    if stun is not None:
        if not isinstance(stun, str) or not stun:
            raise ValueError(f"link.stun is HOST[:PORT], got {stun!r}")
        parse_host_port(stun)
    exchanges = int(
        _number(
            extra.get("link.direct_exchanges", s.exchanges),
            "link.direct_exchanges",
            minimum=1,
            whole=True,
        )
    )
    idle = _number(extra.get("link.direct_idle", s.idle), "link.direct_idle", minimum=1.0)
    guess = _guess_settings(extra, s.punch.guess)
    return dataclasses.replace(
        s,
        enabled=enabled,
        resume=resume,
        stun=stun if isinstance(stun, str) else None,
        exchanges=exchanges,
        idle=idle,
        punch=dataclasses.replace(s.punch, guess=guess),
    )


#: ``link.*`` key of each ``GuessSettings`` field
_GUESS_KEYS = {
    "enabled": "link.direct_guess",
    "sockets": "link.direct_guess_sockets",
    "probes": "link.direct_guess_probes",
    "rate": "link.direct_guess_rate",
    "burst": "link.direct_guess_burst",
    "seconds": "link.direct_guess_time",
}


def _guess_settings(extra: dict[str, Any], defaults: GuessSettings) -> GuessSettings:
    """The ``link.direct_guess*`` values over ``defaults``; ``GuessSettings`` checks the
    ranges (``ValueError`` naming the key)."""
    kinds = {f.name: f.type for f in dataclasses.fields(GuessSettings)}
    values: dict[str, Any] = {
        name: setting_value(key, kinds[name], extra[key])
        for name, key in _GUESS_KEYS.items()
        if key in extra
    }
    return dataclasses.replace(defaults, **values)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: object) -> bytes:
    if not isinstance(text, str) or len(text) > 8192:
        raise PunchError("envelope field is not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise PunchError("envelope field is not base64url") from None


def _decode(plaintext: bytes) -> dict[str, Any] | None:
    """Our envelope, or None for anything else (another envelope user's, or malformed)."""
    if plaintext[:1] != b"{" or len(plaintext) > 16384:
        return None
    try:
        body = json.loads(plaintext)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("t") != TAG or body.get("v") != VERSION:
        return None
    if not isinstance(body.get("op"), str) or not isinstance(body.get("n"), int):
        return None
    return body


async def _send(pipe: LinkPipe, op: str, n: int, **fields: object) -> None:
    body = {"t": TAG, "v": VERSION, "op": op, "n": n, **fields}
    await pipe.send_envelope(json.dumps(body, separators=(",", ":")).encode())


class EnvelopeStream(Stream):
    """The punch's byte stream for one exchange, carried in ``punch`` envelopes."""

    def __init__(self, pipe: LinkPipe, n: int) -> None:
        self._pipe = pipe
        self.n = n
        self.buffer = ReceiveBuffer()

    def feed(self, data: bytes) -> None:
        if self.buffer.size + len(data) > MAX_BUFFERED:
            self.buffer.fail(StreamError(Code.PROTOCOL_ERROR, "too many hole-punch bytes"))
            return
        self.buffer.feed(data)

    async def read(self, n: int = -1) -> bytes:
        return await self.buffer.read(n)

    async def write(self, data: bytes) -> None:
        await _send(self._pipe, "punch", self.n, d=_b64(data))

    async def close_write(self) -> None:
        return None

    def reset(self, code: int = Code.RESET) -> None:
        return None

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        return None


def _remote_text(conn: KpsConnection) -> str | None:
    return format_addr(conn.remote_address) if conn.remote_address is not None else None


async def _stun_for(pipe: LinkPipe, s: DirectSettings) -> Address:
    if s.stun is not None:
        return await resolve_server(s.stun)
    url = pipe.peer.split("~link:", 1)[0]
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or "127.0.0.1"
    return await resolve_server(f"[{host}]" if ":" in host else host)


def _watch_down(
    pipe: LinkPipe, conn: PathConnection, direct: KpsConnection, n: int
) -> asyncio.Task[None]:
    """When ``direct`` ends, tell the peer over the relay (it may not have noticed yet)."""

    async def watch() -> None:
        await direct.wait_closed()
        if not conn.closed:
            with contextlib.suppress(Exception):
                await _send(pipe, "down", n)

    task = asyncio.get_running_loop().create_task(watch())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


# -- the client ---------------------------------------------------------------------------------


class _Side:
    """What both ends do with an envelope: punch bytes go to the running exchange, and the
    peer's word that the direct path is gone aborts it; the rest is ``_on_message``'s."""

    conn: PathConnection
    stream: EnvelopeStream | None

    def on_envelope(self, plaintext: bytes) -> None:
        body = _decode(plaintext)
        if body is None:
            return
        op, n = body["op"], body["n"]
        if op == "punch":
            stream = self.stream
            if stream is not None and stream.n == n:
                try:
                    stream.feed(_unb64(body.get("d")))
                except PunchError as exc:
                    stream.buffer.fail(exc)
        elif op == "down":
            if self.conn.direct is not None:
                self.conn.direct.abort(Code.CANCELLED, "the peer lost the direct path")
        elif op == "resume":
            k = body.get("k")
            if isinstance(k, int) and not isinstance(k, bool) and k > 0:
                self.conn.expect_resume(k)
        else:
            self._on_message(op, n, body)

    def _on_message(self, op: str, n: int, body: dict[str, Any]) -> None:
        raise NotImplementedError


def _announcer(pipe: LinkPipe) -> Callable[[int], Awaitable[None]]:
    async def announce(k: int) -> None:
        await _send(pipe, "resume", 0, k=k)

    return announce


class _ClientSide(_Side):
    def __init__(self, pipe: LinkPipe, conn: PathConnection, s: DirectSettings) -> None:
        self.pipe, self.conn, self.s = pipe, conn, s
        self.budget = GuessBudget()  # one many-port guess per connection
        conn.announce = _announcer(pipe)
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        self.stream: EnvelopeStream | None = None
        self.kps = KpsSettings(idle_timeout=s.idle, keepalive=s.idle / 3)

    def _on_message(self, op: str, n: int, body: dict[str, Any]) -> None:
        if op in ("ready", "no") and not self.inbox.full():
            self.inbox.put_nowait(body)

    async def run(self) -> None:
        stun = await _stun_for(self.pipe, self.s)
        delay = self.s.backoff
        for n in range(1, self.s.exchanges + 1):
            if n > 1:
                self.conn.first_exchange_done.set()
                await asyncio.sleep(delay)
                delay *= 2
            self.stream = EnvelopeStream(self.pipe, n)
            # the STUN queries run while hello and ready travel (they do not need the host)
            start = ClientStart(stun, self.s.punch, self.kps)
            try:
                answer = await self._ask(n)
                if answer is None:
                    log.info("direct path: the host did not answer; staying on the relay")
                    return
                if answer["op"] != "ready":
                    log.info("direct path: the host declined; staying on the relay")
                    return
                token = _unb64(answer.get("token"))
                self.conn.resume = self.s.resume and answer.get("resume") == 1
                started = asyncio.get_running_loop().time()
                direct = await punch_as_client(
                    self.stream, stun, self.s.punch, self.kps, budget=self.budget, start=start
                )
            except (KeywireError, OSError, TimeoutError) as exc:
                log.info("direct path: exchange %d failed: %s", n, exc)
                continue
            finally:
                self.stream = None
                await start.close()  # what the exchange did not take
            if direct is None:
                log.info("direct path: exchange %d found no direct path", n)
                continue
            took = asyncio.get_running_loop().time() - started
            if not await self._bind(direct, token):
                continue
            log.info("direct path to %s after %.0f ms", _remote_text(direct), took * 1000)
            self.conn.attach(direct, _remote_text(direct))
            watcher = _watch_down(self.pipe, self.conn, direct, n)
            try:
                await direct.wait_closed()
            finally:
                watcher.cancel()
            if self.conn.closed:
                return
            log.info("direct path lost; new streams go over the relay")

    async def _ask(self, n: int) -> dict[str, Any] | None:
        """Ask the host for exchange ``n``: its ``ready`` or ``no`` (None: no answer in time)."""
        await _send(self.pipe, "hello", n, **({"resume": 1} if self.s.resume else {}))
        try:
            async with asyncio.timeout(self.s.ready_timeout):
                while (answer := await self.inbox.get())["n"] != n:
                    pass
        except TimeoutError:
            return None
        return answer

    async def _bind(self, direct: KpsConnection, token: bytes) -> bool:
        try:
            async with asyncio.timeout(5.0):
                stream = await direct.open_stream()
                await stream.write(MAGIC + token)
                await stream.close_write()
            return True
        except (KeywireError, OSError, TimeoutError) as exc:
            log.info("direct path: binding failed: %s", exc)
            direct.abort(Code.CANCELLED, "binding failed")
            return False


def start_client(pipe: LinkPipe, relay: Connection, s: DirectSettings) -> PathConnection:
    """Wrap a freshly dialled Link session; the punch runs in the background."""
    conn = PathConnection(relay)
    side = _ClientSide(pipe, conn, s)
    pipe.on_envelope = side.on_envelope
    task = asyncio.get_running_loop().create_task(side.run())

    def stop() -> None:
        task.cancel()

    conn.on_end.append(stop)
    _background.add(task)
    task.add_done_callback(_background.discard)
    task.add_done_callback(_quiet)
    task.add_done_callback(lambda _t: conn.settled.set())
    return conn


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("direct path: %s", task.exception())


# -- the host -----------------------------------------------------------------------------------


class _HostSession(_Side):
    def __init__(
        self, service: DirectHost, pipe: LinkPipe, conn: PathConnection, s: DirectSettings
    ) -> None:
        self.service, self.pipe, self.conn, self.s = service, pipe, conn, s
        self.budget = GuessBudget()  # one many-port guess per connection
        self.exchanges = 0
        self.stream: EnvelopeStream | None = None
        self.token: bytes | None = None
        self.task: asyncio.Task[None] | None = None
        conn.announce = _announcer(pipe)

    def _on_message(self, op: str, n: int, body: dict[str, Any]) -> None:
        if op == "hello" and (self.task is None or self.task.done()):
            self.conn.resume = self.s.resume and body.get("resume") == 1
            self.task = asyncio.get_running_loop().create_task(self._exchange(n))
            self.task.add_done_callback(_quiet)

    async def _exchange(self, n: int) -> None:
        self.exchanges += 1
        if not self.s.enabled or self.exchanges > self.s.exchanges:
            await _send(self.pipe, "no", n)
            return
        listener = await self.service.listener()
        stun = await _stun_for(self.pipe, self.s)
        self.forget_token()
        self.token = os.urandom(TOKEN_SIZE)
        self.service.tokens[self.token] = self
        self.stream = EnvelopeStream(self.pipe, n)
        offer = {"resume": 1} if self.conn.resume else {}
        await _send(self.pipe, "ready", n, token=_b64(self.token), **offer)
        try:
            ok = await punch_as_host(
                self.stream,
                listener,
                stun,
                self.s.punch,
                on_direct=self.service.bind,
                kps=self.service.kps,
                budget=self.budget,
            )
            log.info("direct path: exchange %d %s", n, "succeeded" if ok else "found none")
        except (KeywireError, OSError, TimeoutError) as exc:
            log.info("direct path: exchange %d failed: %s", n, exc)
        finally:
            self.stream = None

    def attach(self, direct: KpsConnection) -> None:
        self.conn.attach(direct, _remote_text(direct))
        _watch_down(self.pipe, self.conn, direct, 0)

    def forget_token(self) -> None:
        if self.token is not None:
            self.service.tokens.pop(self.token, None)
            self.token = None

    def end(self) -> None:
        self.forget_token()
        if self.task is not None:
            self.task.cancel()


class DirectHost:
    """One Link host's direct-path side: a KPS listener on its own UDP port (opened at the
    first exchange) and the tokens that bind direct connections to sessions."""

    def __init__(self, identity: Identity, s: DirectSettings) -> None:
        self.identity = identity
        self.s = s
        self.kps = KpsSettings(idle_timeout=s.idle, keepalive=s.idle / 3)
        self.tokens: dict[bytes, _HostSession] = {}
        self._listener: KpsListener | None = None
        self._lock = asyncio.Lock()

    async def listener(self) -> KpsListener:
        async with self._lock:
            if self._listener is None:
                listener = KpsListener(self.identity, self.kps, self.bind)
                await listener.start("0.0.0.0", 0)
                self._listener = listener
            return self._listener

    def wrap(self, pipe: LinkPipe, relay: Connection) -> PathConnection:
        """The host's side of one session: answer the client's ``hello`` if it sends one."""
        conn = PathConnection(relay)
        session = _HostSession(self, pipe, conn, self.s)
        pipe.on_envelope = session.on_envelope
        conn.on_end.append(session.end)
        return conn

    async def bind(self, direct: KpsConnection) -> None:
        """A direct connection (accepted, or dialled in a reversed round): its first stream
        names the session by token; anything else is aborted."""
        try:
            async with asyncio.timeout(5.0):
                stream = await direct.accept_stream()
                head = await stream.readexactly(len(MAGIC) + TOKEN_SIZE)
        except (KeywireError, OSError, TimeoutError, asyncio.IncompleteReadError):
            direct.abort(Code.PROTOCOL_ERROR, "no binding")
            return
        session = self.tokens.get(head[len(MAGIC) :]) if head.startswith(MAGIC) else None
        if session is None or session.conn.closed:
            direct.abort(Code.PROTOCOL_ERROR, "unknown binding")
            return
        session.attach(direct)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close(abort_connections=True)
            self._listener = None
