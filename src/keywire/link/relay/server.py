"""The relay's asyncio shell: one ``asyncio.Protocol`` per socket around websockets' sans-IO
``ServerProtocol``, driving ``RelayCore``.

No task per connection and no message queue beyond what is in flight keeps an idle registered
host cheap. Backpressure is real: while a frame waits (for shaping, the quota, or a receiver
whose socket is full) the sender's socket is paused, so the relay never drops and never buffers
without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import resource
import time
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import parse_qs

from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from ...admission import ACCEPT_EXHAUSTED
from .config import RelayConfig
from .core import (
    MAX_FRAME,
    Action,
    Close,
    CloseCode,
    Link,
    LinkState,
    RelayCore,
    Role,
    Send,
    Splice,
)
from .wsout import flush_ws

log = logging.getLogger("keywire.link.relay")

PATH = "/v1/link"
WRITE_HIGH = 1 << 20
WRITE_LOW = 1 << 18
HARD_BUFFER_CAP = 64 << 20
CLOSE_TIMEOUT = 2.0
SWEEP_SEC = 0.5
#: bytes of HTTP request a connection may send before its upgrade (websockets alone would
#: take up to 128 header lines of 8 KiB each)
MAX_REQUEST = 16 * 1024
#: the largest message before a socket is spliced: control frames are at most 4 KiB, so an
#: unauthenticated peer never makes the relay buffer more than this (16 MiB once relaying)
MAX_CONTROL_MESSAGE = 8 * 1024
#: how many of the oldest unfinished upgrades are looked at to find one from a crowded IP
EVICTION_SCAN = 32
#: file descriptors kept free of sockets, for the listener, logs and the interpreter
FD_RESERVE = 64
#: at most one line per this many seconds for each kind of "at a limit" event
LIMIT_LOG_SEC = 10.0


class _Socket(asyncio.Protocol):
    """One TCP connection: HTTP request, then WebSocket frames."""

    __slots__ = (
        "admitted",
        "assembling",
        "blocked_since",
        "close_timer",
        "credit",
        "id",
        "in_share",
        "ip",
        "opened",
        "origin",
        "paused",
        "pinged",
        "queue",
        "relay",
        "request_bytes",
        "retry",
        "tcp_ip",
        "transport",
        "write_blocked",
        "ws",
    )

    def __init__(self, relay: RelayServer, socket_id: int) -> None:
        self.relay = relay
        self.id = socket_id
        self.ws = ServerProtocol(max_size=MAX_CONTROL_MESSAGE)
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.tcp_ip = ""
        self.opened = 0.0
        self.request_bytes = 0
        self.admitted = False
        #: counted in its IP's socket share (a host's verified dial-back is not)
        self.in_share = False
        #: admitted past its IP's share on a dial-back owed to a host there: the upgrade
        #: request must carry the link's ticket
        self.credit = False
        self.origin = ""
        self.paused = False
        self.write_blocked = False
        self.blocked_since: float | None = None
        self.pinged = False
        self.assembling: tuple[Opcode, list[bytes]] | None = None
        self.queue: deque[tuple[Opcode, bytes]] | None = None
        self.retry: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        peer = transport.get_extra_info("peername")
        self.ip = self.tcp_ip = str(peer[0]) if peer else "?"
        self.opened = self.relay.now()
        self.relay.admit(self)

    def data_received(self, data: bytes) -> None:
        self.pinged = False
        if self.ws.state is State.CONNECTING:
            self.request_bytes += len(data)
            if self.request_bytes > MAX_REQUEST:
                self.relay.limit_hit("request_too_large", self.tcp_ip)
                self.ws.send_response(self.ws.reject(431, "request too large\n"))
                self.flush()
                self.abort()
                return
        self.ws.receive_data(data)
        if self.ws.state is State.CONNECTING and isinstance(self.ws.handshake_exc, InvalidMessage):
            self._answer_garbage()
        self._handle_events()
        self.flush()

    def _answer_garbage(self) -> None:
        """Not HTTP: websockets just closes; say 400 first, as any HTTP server would."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._handle_events()
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.retry, self.close_timer):
            if timer is not None:
                timer.cancel()
        self.relay.lost(self)

    def pause_writing(self) -> None:
        self.write_blocked = True
        self.blocked_since = self.relay.now()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self.blocked_since = None
        self.relay.writable(self)

    # -- helpers ------------------------------------------------------------------------------
    def flush(self) -> None:
        if flush_ws(self.ws, self.transport) and self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def send_json(self, message: dict[str, Any]) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_text(json.dumps(message, separators=(",", ":")).encode())
            self.flush()

    def close(self, code: int, reason: str) -> None:
        if self.ws.state is State.OPEN:
            with contextlib.suppress(InvalidState):
                self.ws.send_close(code, reason[:120])
            self.flush()
        if self.close_timer is None and self.transport is not None:
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _handle_events(self) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self.relay.request(self, event)
                self.relay.upgraded(self)
                continue
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.PONG or opcode is Opcode.PING:
                continue
            if opcode is Opcode.CLOSE:
                continue
            if opcode is Opcode.CONT:
                if self.assembling is None:
                    continue
                self.assembling[1].append(bytes(event.data))
                if not event.fin:
                    continue
                opcode, parts = self.assembling
                self.assembling = None
                data = b"".join(parts)
            elif not event.fin:
                self.assembling = (opcode, [bytes(event.data)])
                continue
            else:
                data = bytes(event.data)
            self.relay.message(self, opcode, data)


class RelayServer:
    """The relay: an HTTP/WebSocket listener, the core, and the timers that drive it."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._loop = asyncio.get_running_loop()
        self.core = RelayCore(config, self.now(), int(time.time() * 1000))
        self.sockets: dict[int, _Socket] = {}
        self._ends: dict[int, _Socket] = {}  # socket id → its splice partner
        self._next_id = 0
        self._server: asyncio.Server | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._last_heartbeat = self.now()
        self.port = 0
        self.stopping = False
        #: sockets whose HTTP request is not complete yet, oldest first
        self.upgrading: OrderedDict[int, _Socket] = OrderedDict()
        self._upgrading_per_ip: dict[str, int] = {}
        #: connections admitted on dial-back credit, per IP, still before their upgrade
        self._credit_per_ip: dict[str, int] = {}
        self._per_ip: dict[str, int] = {}
        self.admitted = 0
        budget, self.backlog = socket_budget()
        self.max_sockets = config.max_sockets or budget
        self._limit_logged: dict[str, float] = {}
        self._limit_counts: dict[str, int] = {}

    def now(self) -> float:
        return self._loop.time()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> int:
        self._install_accept_log()
        self._server = await self._loop.create_server(
            self._make_socket,
            self.config.host,
            self.config.port,
            reuse_address=True,
            backlog=self.backlog,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        self._schedule_sweep()
        log.info("relay listening", extra={"fields": {"port": self.port, "host": self.config.host}})
        return self.port

    def _make_socket(self) -> _Socket:
        self._next_id += 1
        sock = _Socket(self, self._next_id)
        self.sockets[sock.id] = sock
        return sock

    # -- admission: what an unauthenticated peer may hold -------------------------------------
    def admit(self, sock: _Socket) -> None:
        """A new TCP connection: within the caps, or dropped at once (its fd freed).

        A source past its share is refused, unless the relay owes dial-backs to hosts
        registered from it: that many connections get in on credit and must show the link's
        ticket in their upgrade request. When the relay as a whole is full, the oldest
        connection still before its upgrade makes room, so a flood of idle connections
        cannot keep out a newcomer (a real client upgrades at once and stops counting here).
        """
        ip = sock.tcp_ip
        over = ""
        if self._per_ip.get(ip, 0) >= self.config.max_sockets_per_ip:
            over = "max_sockets_per_ip"
        elif self._upgrading_per_ip.get(ip, 0) >= self.config.max_upgrading_per_ip:
            over = "max_upgrading_per_ip"
        if over:
            if self._credit_per_ip.get(ip, 0) >= self.core.dialbacks_owed(ip):
                self.limit_hit(over, ip)
                sock.abort()
                return
            sock.credit = True
        while self.upgrading and (
            len(self.upgrading) >= self.config.max_upgrading or self.admitted >= self.max_sockets
        ):
            victim = self._eviction_candidate()
            del self.upgrading[victim.id]
            self._forget_upgrading(victim)
            self._release(victim)
            self.limit_hit("max_upgrading", victim.tcp_ip)
            victim.abort()
        if self.admitted >= self.max_sockets:
            self.limit_hit("max_sockets", ip)
            sock.abort()
            return
        sock.admitted = True
        self.admitted += 1
        self.upgrading[sock.id] = sock
        if sock.credit:
            self._credit_per_ip[ip] = self._credit_per_ip.get(ip, 0) + 1
            return
        sock.in_share = True
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._upgrading_per_ip[ip] = self._upgrading_per_ip.get(ip, 0) + 1

    def _eviction_candidate(self) -> _Socket:
        """Among the oldest few unfinished upgrades, the first whose IP holds others too (the
        crowd makes room; a lone newcomer survives a burst), else the oldest of all."""
        oldest: _Socket | None = None
        for n, sock in enumerate(self.upgrading.values()):
            if n >= EVICTION_SCAN:
                break
            if sock.credit:
                continue  # owed to a host: anonymous connections go first
            oldest = oldest or sock
            if self._upgrading_per_ip.get(sock.tcp_ip, 0) > 1:
                return sock
        return oldest or next(iter(self.upgrading.values()))

    def upgraded(self, sock: _Socket) -> None:
        """Its HTTP request is complete (answered, or upgraded to WebSocket)."""
        if self.upgrading.pop(sock.id, None) is not None:
            self._forget_upgrading(sock)

    def _forget_upgrading(self, sock: _Socket) -> None:
        if sock.credit:
            _decrement(self._credit_per_ip, sock.tcp_ip)
        else:
            _decrement(self._upgrading_per_ip, sock.tcp_ip)

    def _release(self, sock: _Socket) -> None:
        """Its slot (in all and in its IP's share) is free again, at once."""
        if sock.admitted:
            sock.admitted = False
            self.admitted -= 1
        self._leave_share(sock)

    def _leave_share(self, sock: _Socket) -> None:
        if sock.in_share:
            sock.in_share = False
            _decrement(self._per_ip, sock.tcp_ip)

    def _dialback(self, sock: _Socket, query: str) -> bool:
        """Whether the upgrade request is a host's dial-back: ``?link=ID&ticket=T`` naming a
        link waiting for its host (the ticket went only to the host's control socket). Such a
        socket counts against the host's link, not its IP's anonymous share."""
        try:
            fields = parse_qs(query, max_num_fields=4)
        except ValueError:  # more fields than a dial-back has
            return False
        link_id, ticket = fields.get("link", [""])[0], fields.get("ticket", [""])[0]
        if not (link_id and ticket and self.core.dialback_credential(link_id, ticket)):
            return False
        self._leave_share(sock)
        return True

    def limit_hit(self, reason: str, ip: str) -> None:
        """Count a refusal; log at most one line per reason every ``LIMIT_LOG_SEC``."""
        self.core.counters.reject(reason)
        self._limit_counts[reason] = self._limit_counts.get(reason, 0) + 1
        now = self.now()
        if now - self._limit_logged.get(reason, -LIMIT_LOG_SEC) >= LIMIT_LOG_SEC:
            self._limit_logged[reason] = now
            count, self._limit_counts[reason] = self._limit_counts[reason], 0
            log.warning(
                "limit reached",
                extra={"fields": {"limit": reason, "lastIp": ip, "refusals": count}},
            )

    def _install_accept_log(self) -> None:
        """asyncio reports an exhausted accept() through the loop's exception handler, once per
        retry; keep one rate-limited line of it instead of a traceback each time."""
        previous = self._loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == ACCEPT_EXHAUSTED:
                self.limit_hit("accept_exhausted", "?")
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        self._loop.set_exception_handler(handler)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close every socket with 1001, and wait (bounded) for them to go."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for timer in self._timers:
            timer.cancel()
        for sock in list(self.sockets.values()):
            sock.close(CloseCode.SHUTDOWN, "relay shutting down")
        deadline = self.now() + grace
        while self.sockets and self.now() < deadline:
            await asyncio.sleep(0.05)
        for sock in list(self.sockets.values()):
            sock.abort()
        log.info("relay stopped", extra={"fields": {}})

    # -- HTTP ---------------------------------------------------------------------------------
    def request(self, sock: _Socket, request: Request) -> None:
        path, _, query = request.path.partition("?")
        headers = request.headers
        if self.config.trust_proxy and "X-Forwarded-For" in headers:
            sock.ip = headers["X-Forwarded-For"].split(",")[0].strip() or sock.ip
        upgrade = "websocket" in headers.get("Upgrade", "").lower()
        if not (upgrade and self._dialback(sock, query)) and sock.credit:
            self.limit_hit("dialback_credit", sock.tcp_ip)  # let in on credit, but no ticket
            sock.ws.send_response(sock.ws.reject(429, "too many connections\n"))
            sock.flush()
            sock.abort()
            return
        if upgrade:
            if path != PATH or self.stopping:
                sock.ws.send_response(sock.ws.reject(404, "not found\n"))
                sock.flush()
                sock.abort()
                return
            response = sock.ws.accept(request)
            sock.ws.send_response(response)
            sock.flush()
            if response.status_code == 101:
                sock.origin = (self.config.origin or headers.get("Host", "")).strip().lower()
                self.core.open(sock.id, sock.ip, sock.origin, self.now())
            return
        status, content_type, body = self._http(path, headers)
        response = Response(
            status,
            "OK" if status == 200 else "Error",
            Headers(
                [
                    ("Content-Type", content_type),
                    ("Content-Length", str(len(body))),
                    ("Connection", "close"),
                    ("Cache-Control", "no-store"),
                ]
            ),
            body,
        )
        sock.ws.send_response(response)
        sock.flush()

    def _http(self, path: str, headers: Headers) -> tuple[int, str, bytes]:
        if path in ("/health", "/healthz"):
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/v1/stats":
            given = headers.get("Authorization", "").encode("utf-8", "replace")
            wanted = f"Bearer {self.config.admin_token}".encode()
            admin = bool(self.config.admin_token) and hmac.compare_digest(given, wanted)
            return 200, "application/json", json.dumps(self.core.stats(self.now(), admin)).encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics().encode()
        return 404, "application/json", b'{"error":"not_found"}'

    def metrics(self) -> str:
        """Prometheus text exposition of the relay's gauges and counters."""
        core, counters = self.core, self.core.counters
        states: dict[LinkState, int] = {s: 0 for s in LinkState if s is not LinkState.CLOSED}
        for link in core.links.values():
            states[link.state] += 1
        lines = [
            "# HELP keywire_link_connections Open WebSocket connections.",
            "# TYPE keywire_link_connections gauge",
            f"keywire_link_connections {len(core.peers)}",
            "# HELP keywire_link_registrations Hosts registered now.",
            "# TYPE keywire_link_registrations gauge",
            f"keywire_link_registrations {len(core.registered())}",
            "# HELP keywire_link_links Live links by state.",
            "# TYPE keywire_link_links gauge",
            *(f'keywire_link_links{{state="{s.value}"}} {n}' for s, n in states.items()),
            "# HELP keywire_link_links_total Links introduced since start.",
            "# TYPE keywire_link_links_total counter",
            f"keywire_link_links_total {counters.links_total}",
            "# HELP keywire_link_links_relayed_total Links that reached relaying.",
            "# TYPE keywire_link_links_relayed_total counter",
            f"keywire_link_links_relayed_total {counters.links_relayed}",
            "# HELP keywire_link_registers_total Accepted register messages.",
            "# TYPE keywire_link_registers_total counter",
            f"keywire_link_registers_total {counters.registrations_total}",
            "# HELP keywire_link_bytes_relayed_total Bytes forwarded, by sender.",
            "# TYPE keywire_link_bytes_relayed_total counter",
            f'keywire_link_bytes_relayed_total{{direction="from_host"}} {counters.bytes_from_host}',
            f'keywire_link_bytes_relayed_total{{direction="from_client"}} '
            f"{counters.bytes_from_client}",
            "# HELP keywire_link_rejections_total Refusals and closes, by reason.",
            "# TYPE keywire_link_rejections_total counter",
            *(
                f'keywire_link_rejections_total{{reason="{r}"}} {n}'
                for r, n in sorted(counters.rejections.items())
            ),
        ]
        return "\n".join(lines) + "\n"

    # -- WebSocket messages -------------------------------------------------------------------
    def message(self, sock: _Socket, opcode: Opcode, data: bytes) -> None:
        if sock.id in self._ends:
            if sock.queue is None:
                sock.queue = deque()
            sock.queue.append((opcode, data))
            self._pump(sock)
            return
        if opcode is Opcode.TEXT:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                text = "\x00"
            self.apply(self.core.text(sock.id, text, self.now()))
        else:
            self.apply(self.core.binary(sock.id))

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                target = self.sockets.get(action.peer)
                if target is not None:
                    target.send_json(action.message)
            elif isinstance(action, Close):
                target = self.sockets.get(action.peer)
                if target is not None:
                    log.info(
                        "close",
                        extra={
                            "fields": {
                                "socket": action.peer,
                                "code": action.code,
                                "reason": action.reason,
                            }
                        },
                    )
                    target.close(action.code, action.reason)
            elif isinstance(action, Splice):
                self._splice(action.link)

    def _splice(self, link: Link) -> None:
        assert link.host_end is not None
        client = self.sockets.get(link.client.id)
        host = self.sockets.get(link.host_end.id)
        if client is None or host is None:
            return
        self._ends[client.id] = host
        self._ends[host.id] = client
        client.ws.max_message_size = host.ws.max_message_size = MAX_FRAME
        log.info("link relaying", extra={"fields": {"address": link.address}})

    def _pump(self, src: _Socket) -> None:
        """Forward src's queued frames to its partner, pausing src while they must wait."""
        dst = self._ends.get(src.id)
        peer = self.core.peers.get(src.id)
        link = peer.link if peer is not None else None
        if dst is None or link is None or link.state is not LinkState.RELAYING or not src.queue:
            if src.queue is not None:
                src.queue.clear()
            return
        from_host = peer is link.host_end
        while src.queue:
            if dst.write_blocked:
                src.pause()
                return
            now = self.now()
            delay = self.core.wait(link, now)
            if delay > 0:
                src.pause()
                if src.retry is None:
                    src.retry = self._loop.call_later(delay, self._retry, src)
                return
            opcode, data = src.queue.popleft()
            if dst.ws.state is not State.OPEN:
                src.queue.clear()
                return
            if opcode is Opcode.TEXT:
                dst.ws.send_text(data)
            else:
                dst.ws.send_binary(data)
            dst.flush()
            self.apply(self.core.relayed(link, from_host, len(data), now))
            if dst.transport is not None and dst.transport.get_write_buffer_size() > (
                HARD_BUFFER_CAP
            ):
                self._cut_slow(link)
                return
        src.resume()

    def _retry(self, src: _Socket) -> None:
        src.retry = None
        self._pump(src)

    def writable(self, dst: _Socket) -> None:
        src = self._ends.get(dst.id)
        if src is not None:
            self._pump(src)

    def _cut_slow(self, link: Link) -> None:
        ends = [p for p in (link.client, link.host_end) if p is not None]
        self.core._end_link(link, self.now(), "slow peer", survivor=None)
        for peer in ends:
            self.core.counters.reject("slow_peer")
            sock = self.sockets.get(peer.id)
            if sock is not None:
                sock.close(CloseCode.SLOW_PEER, "slow peer")

    def lost(self, sock: _Socket) -> None:
        self.sockets.pop(sock.id, None)
        self._release(sock)
        self.upgraded(sock)
        partner = self._ends.pop(sock.id, None)
        if partner is not None:
            self._ends.pop(partner.id, None)
            partner.resume()
        self.apply(self.core.closed(sock.id, self.now()))

    # -- timers -------------------------------------------------------------------------------
    def _schedule_sweep(self) -> None:
        if not self.stopping:
            self._timers = [self._loop.call_later(SWEEP_SEC, self._sweep)]

    def _sweep(self) -> None:
        now = self.now()
        try:
            self.apply(self.core.sweep(now))
            deadline = now - self.config.upgrade_sec
            while self.upgrading:
                oldest = next(iter(self.upgrading.values()))
                if oldest.opened > deadline:
                    break
                self.upgraded(oldest)
                self._release(oldest)
                self.limit_hit("upgrade_timeout", oldest.tcp_ip)
                oldest.abort()
            for sock in list(self.sockets.values()):
                if sock.blocked_since is not None and now - sock.blocked_since > (
                    self.config.slow_peer_sec
                ):
                    peer = self.core.peers.get(sock.id)
                    if (
                        peer is not None
                        and peer.link is not None
                        and peer.role in (Role.CLIENT, Role.RELAY)
                    ):
                        self._cut_slow(peer.link)
                    sock.blocked_since = None
            if self.config.heartbeat_sec > 0 and now - self._last_heartbeat >= (
                self.config.heartbeat_sec
            ):
                self._last_heartbeat = now
                self._heartbeat()
        finally:
            self._schedule_sweep()

    def _heartbeat(self) -> None:
        for sock in list(self.sockets.values()):
            if sock.ws.state is not State.OPEN or sock.paused or sock.write_blocked:
                continue
            if sock.pinged:
                log.info("heartbeat lost", extra={"fields": {"socket": sock.id}})
                sock.abort()
                continue
            sock.pinged = True
            sock.ws.send_ping(b"")
            sock.flush()


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def socket_budget() -> tuple[int, int]:
    """Sockets the relay may hold, and its listen backlog: the fd limit (raised to its hard
    maximum) less a reserve and two accept batches (asyncio accepts up to ``backlog``
    sockets at a time, before the caps can drop any), so a flood meets the relay's own cap,
    not EMFILE in ``accept``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    backlog = max(8, min(512, int(soft) // 8))
    return max(16, int(soft) - FD_RESERVE - 2 * backlog), backlog


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def setup_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
