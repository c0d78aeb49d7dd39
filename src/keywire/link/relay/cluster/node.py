"""A relay node of a cluster: ``RelayServer`` plus shared state for what must be global.

Before the core sees a ``register`` or ``resolve``, the node checks what only the cluster
knows: the per-IP rate (one window for all nodes), the register pin and timestamp (an atomic
compare-and-set, so a register replayed at another node is stale), and where the host is.
A client whose host is at another node is spliced there over one authenticated WebSocket
(``splice.RemoteSplice``): one hop, content-blind, the far node's own limits apply.

The node announces itself every second with a 10 s TTL and publishes the hosts it holds (30 s
TTL, renewed every 10 s and at once when the store lost them), so a dead node's hosts are
unreachable through others within 10 s and gone from the store within 30 s; a host that
re-registers at another node is found there at once (the newest registration wins). When
the store is unreachable the node keeps every session it has, still introduces clients to
hosts it holds, and refuses (1013, with a reason) what it cannot check; ``/health`` answers
503 and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State

from ...wire import json_object
from ..config import RelayConfig
from ..core import MAX_CONTROL, PIN_MEMORY_SEC, Action, Close, CloseCode, Peer, Role, Send
from ..server import PATH, RelayServer, _Socket
from .nodeauth import HEADER, check_token, make_token
from .quota import restore, snapshot
from .redis_state import RedisState
from .splice import TRY_AGAIN, RemoteSplice
from .state import (
    Claim,
    ClusterState,
    NodeInfo,
    QuotaSnapshot,
    StateUnavailable,
    new_node_id,
    wall_ms,
)

log = logging.getLogger("keywire.link.relay")

HEARTBEAT_SEC = 1.0
#: long enough that a loaded node's late heartbeat does not hide its hosts; a host that
#: re-registers elsewhere is found at once anyway (the newest registration wins)
NODE_TTL_SEC = 10.0
DIR_TTL_SEC = 30.0
QUOTA_SAVE_SEC = 5.0
QUOTA_TTL_SEC = 3600.0


@dataclass
class ClusterConfig:
    """``--cluster`` and friends."""

    url: str
    #: the WebSocket URL other nodes reach this one at (default: from --host and the port)
    advertise: str | None = None
    #: shared node secret; by default the first node stores a random one in Redis
    secret: bytes | None = None


@dataclass(frozen=True)
class _Remote:
    node: NodeInfo


class ClusterRelayServer(RelayServer):
    """One node of a relay cluster sharing ``state`` (Redis, or memory in one process)."""

    def __init__(
        self, config: RelayConfig, cluster: ClusterConfig, state: ClusterState | None = None
    ) -> None:
        super().__init__(config)
        self.cluster = cluster
        self.state: ClusterState = state if state is not None else RedisState.from_url(cluster.url)
        self.node = NodeInfo(new_node_id(), "")
        self._own_secret = cluster.secret or secrets.token_bytes(32)
        self._secrets: list[bytes] = [self._own_secret]
        self.state_ok = False
        self.state_error = "not connected yet"
        self.live_nodes: list[NodeInfo] = []
        #: IP addresses of the other live nodes (their links skip the per-IP shares)
        self._node_ips: frozenset[str] = frozenset()
        self._gated: dict[int, deque[tuple[Opcode, bytes]]] = {}
        self._remote: dict[int, RemoteSplice] = {}
        self._node_links: set[int] = set()
        self._since: dict[str, int] = {}
        #: registrations taken and not yet in the directory, and whether a task publishes them
        self._unpublished: dict[str, int] = {}
        self._publishing = False
        #: quota snapshots fetched by a register's gate, applied once the core takes it
        self._resume: dict[int, QuotaSnapshot] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._beat: asyncio.Task[None] | None = None
        self._published_at = -1e9
        #: when the last heartbeat that reached the state began (a failure of a call begun
        #: before it is old news, not an outage)
        self._ok_at = -1e9
        self._quota_saved_at = -1e9
        self.remote_splices_total = 0

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> int:
        port = await super().start()
        self.node = NodeInfo(self.node.id, self.cluster.advertise or self._default_url(port))
        await self._heartbeat_once()
        self._beat = asyncio.get_running_loop().create_task(self._heartbeats())
        log.info(
            "cluster node",
            extra={"fields": {"node": self.node.id, "url": self.node.url, "ok": self.state_ok}},
        )
        return port

    def _default_url(self, port: int) -> str:
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{port}{PATH}"

    async def stop(self, grace: float = 5.0) -> None:
        if self._beat is not None:
            self._beat.cancel()
        with contextlib.suppress(StateUnavailable, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.state.retire(self.node)
                for address in list(self._since):
                    await self.state.withdraw(address, self.node.id)
        for splice in list(self._remote.values()):
            splice.client_gone()
        await super().stop(grace)
        for task in list(self._tasks):
            task.cancel()
        await self.state.close()

    def _spawn(self, call: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- heartbeat ----------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SEC)
            await self._heartbeat_once()

    def _held(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for address in self.core.registered():
            held[address] = self._since.setdefault(address, wall_ms())
        for address in [a for a in self._since if a not in held]:
            del self._since[address]
        return held

    async def _heartbeat_once(self) -> None:
        now = self.now()
        try:
            kept = await self.state.announce(self.node, NODE_TTL_SEC)
            if self.cluster.secret is None:
                shared = await self.state.node_secret(self._secrets[0])
                if shared != self._secrets[0]:
                    self._secrets = [shared, self._secrets[0]]
            if not kept and self.state_ok:
                log.warning("cluster: this node's record was gone; publishing its hosts again")
            if not kept or not self.state_ok or now - self._published_at >= DIR_TTL_SEC / 3:
                await self.state.publish(self._held(), self.node.id, DIR_TTL_SEC)
                self._published_at = now
            self.live_nodes = await self.state.live_nodes()
            self._node_ips = frozenset(
                _ip_of(node.url) for node in self.live_nodes if node.id != self.node.id
            )
            # half a beat of slack: late beats must not stretch the interval to six of them
            due = QUOTA_SAVE_SEC - HEARTBEAT_SEC / 2
            if self.config.hourly_bytes > 0 and now - self._quota_saved_at >= due:
                await self._save_quotas(self._quota_saved_at)
                self._quota_saved_at = now
        except StateUnavailable as exc:
            self._unavailable(exc)
            return
        if not self.state_ok:
            log.info("cluster state reachable", extra={"fields": {"node": self.node.id}})
        self.state_ok, self.state_error = True, ""
        self._ok_at = now

    def _unavailable(self, exc: StateUnavailable, began: float | None = None) -> None:
        """Note the outage (one log line when it starts or its reason changes). A call that
        began before the last good heartbeat (one stuck on a dead master during a failover)
        does not mark the state down again: the heartbeat since is the newer word."""
        if began is not None and began < self._ok_at:
            return
        if self.state_ok or self.state_error != str(exc):
            log.warning("cluster state unavailable", extra={"fields": {"error": str(exc)}})
        self.state_ok, self.state_error = False, str(exc)

    async def _save_quotas(self, since: float) -> None:
        now, wall = self.now(), wall_ms()
        for address, quota in list(self.core.quotas.items()):
            if quota.last_used >= since:
                await self.state.save_quota(address, snapshot(quota, now, wall), QUOTA_TTL_SEC)

    # -- the gate before the core -------------------------------------------------------------
    def message(self, sock: _Socket, opcode: Opcode, data: bytes) -> None:
        remote = self._remote.get(sock.id)
        if remote is not None:
            remote.from_client(opcode, data)
            return
        gated = self._gated.get(sock.id)
        if gated is not None:
            gated.append((opcode, data))
            return
        if opcode is Opcode.TEXT and sock.id not in self._ends and sock.id in self.core.peers:
            message = _control(data)
            kind = message.get("type") if message is not None else None
            if message is not None and kind in ("register", "resolve"):
                self._gated[sock.id] = deque()
                sock.pause()
                check = self._check_register if kind == "register" else self._check_resolve
                self._spawn(self._gate(sock, data, message, check))
                return
        super().message(sock, opcode, data)

    async def _gate(
        self,
        sock: _Socket,
        data: bytes,
        message: dict[str, Any],
        check: Callable[[_Socket, Peer, dict[str, Any]], Awaitable[list[Action] | _Remote | None]],
    ) -> None:
        """Run ``check`` (a cluster-wide register or resolve check) before the core sees the
        message; the socket's later frames wait in ``_gated`` meanwhile."""
        peer = self.core.peers.get(sock.id)
        began = self.now()
        try:
            verdict = [] if peer is None else await check(sock, peer, message)
        except StateUnavailable as exc:
            self._unavailable(exc, began)
            self.core.counters.reject("cluster_unavailable")
            what = "register" if message.get("type") == "register" else "locate this host"
            verdict = [Close(sock.id, TRY_AGAIN, f"cluster state unavailable, cannot {what}")]
        queued = self._gated.pop(sock.id, None)
        if queued is None or sock.id not in self.sockets:
            return
        if isinstance(verdict, _Remote):
            self._splice_remote(sock, data, verdict.node)
        elif verdict is None:
            super().message(sock, Opcode.TEXT, data)
            if message.get("type") == "register":
                self._registered(sock, message)
        else:
            self.apply(verdict)
        sock.resume()
        for opcode, more in queued:
            self.message(sock, opcode, more)

    async def _ip_ok(self, sock: _Socket, ip: str, local: bool) -> bool:
        """The cluster-wide register+resolve window (nodes' own links were counted already)."""
        limit = self.config.ip_rate_per_min
        if limit <= 0 or sock.id in self._node_links:
            return True
        try:
            return await self.state.hit_ip(ip, limit)
        except StateUnavailable:
            if local:  # the node's own window (in the core) still applies
                return True
            raise

    async def _check_register(
        self, sock: _Socket, peer: Peer, message: dict[str, Any]
    ) -> list[Action] | _Remote | None:
        if not await self._ip_ok(sock, peer.ip, local=False):
            return self._refuse(peer.id, CloseCode.RATE_LIMITED, "rate limited")
        address, auth = message.get("address"), message.get("auth")
        if (
            peer.role not in (Role.NEW, Role.CONTROL)
            or not isinstance(address, str)
            or not 1 <= len(address) <= 128
            or self.core._check_auth(address, auth, peer.origin, self.now()) is not None
        ):
            return None  # the core refuses it, with its own reason
        assert isinstance(auth, dict)
        key, ts = auth["pub"], auth["ts"]
        if self.config.allowlist_active and key not in self.config.allowed_register_keys:
            return None
        claim = await self.state.claim_register(address, key, ts, PIN_MEMORY_SEC)
        if claim is not Claim.OK:
            self.core.counters.reject(claim.value)
            return [Send(peer.id, {"type": "error", "error": claim.value})]
        if self.config.hourly_bytes > 0 and address not in self.core.quotas:
            # fetched before the host hears "registered": a link it accepts right after must
            # be charged to the allowance it brought from its last node, not a fresh one
            saved = await self.state.load_quota(address)
            if saved is not None:
                self._resume[sock.id] = saved
        return None

    def _registered(self, sock: _Socket, message: dict[str, Any]) -> None:
        """After the core took a register: publish it, resume its quota."""
        address = message.get("address")
        peer = self.core.peers.get(sock.id)
        saved = self._resume.pop(sock.id, None)
        if peer is None or peer.role is not Role.CONTROL or not isinstance(address, str):
            return
        if peer.address != address:
            return
        if saved is not None and address not in self.core.quotas:
            self.core.quotas[address] = restore(
                saved, self.config.hourly_bytes, self.config.trickle_bps, self.now(), wall_ms()
            )
        since = wall_ms()
        self._since[address] = since
        self._unpublished[address] = since
        if not self._publishing:
            self._publishing = True
            self._spawn(self._publish())

    async def _publish(self) -> None:
        """Publish new registrations, batched: a burst of registers is a few pipelines from
        one task, not a task (and a wait for a connection) per host."""
        began = self.now()
        try:
            while self._unpublished:
                batch, self._unpublished = self._unpublished, {}
                began = self.now()
                await self.state.publish(batch, self.node.id, DIR_TTL_SEC)
        except StateUnavailable as exc:
            self._unpublished.clear()
            self._unavailable(exc, began)  # the heartbeat republishes every host held here
        finally:
            self._publishing = False

    async def _check_resolve(
        self, sock: _Socket, peer: Peer, message: dict[str, Any]
    ) -> list[Action] | _Remote | None:
        address = message.get("address")
        if peer.role is not Role.NEW or not isinstance(address, str):
            return None
        local = self.core.holder(address) is not None
        if not await self._ip_ok(sock, peer.ip, local):
            return self._refuse(peer.id, CloseCode.RATE_LIMITED, "rate limited")
        if local or sock.id in self._node_links:
            return None  # here, or asked by a node: never a second hop
        node = await self.state.locate(address)
        if node is None or node.id == self.node.id:
            return None  # the core answers unknown_address
        return _Remote(node)

    def _refuse(self, peer_id: int, code: CloseCode, reason: str) -> list[Action]:
        self.core.counters.reject(code.name.lower())
        return [Close(peer_id, int(code), reason)]

    def _splice_remote(self, sock: _Socket, data: bytes, node: NodeInfo) -> None:
        peer = self.core.peers.pop(sock.id)  # the far node runs Link's protocol for it now
        token = make_token(self._secrets[0], self.node.id, wall_ms(), peer.ip)
        self._remote[sock.id] = RemoteSplice(sock, node.url, token, data)
        self.remote_splices_total += 1

    # -- sockets ------------------------------------------------------------------------------
    def admit(self, sock: _Socket) -> None:
        """Other nodes' links all come from their node's IP: they count against the caps in
        all, not against one IP's share (which would cap cross-node sessions per node pair)."""
        if sock.tcp_ip not in self._node_ips:
            super().admit(sock)
            return
        config = self.config
        shares = config.max_sockets_per_ip, config.max_upgrading_per_ip
        config.max_sockets_per_ip = config.max_upgrading_per_ip = 1 << 30
        try:
            super().admit(sock)
        finally:
            config.max_sockets_per_ip, config.max_upgrading_per_ip = shares

    def request(self, sock: _Socket, request: Request) -> None:
        super().request(sock, request)
        value = request.headers.get(HEADER)
        if value is None or sock.ws.state is not State.OPEN:
            return
        checked = check_token(value, self._secrets, wall_ms())
        peer = self.core.peers.get(sock.id)
        if checked is None or peer is None:
            self.core.counters.reject("node_auth_failed")
            sock.close(int(CloseCode.AUTH_FAILED), "bad node token")
            return
        sock.ip = peer.ip = checked[1]
        self._node_links.add(sock.id)

    def writable(self, dst: _Socket) -> None:
        super().writable(dst)
        remote = self._remote.get(dst.id)
        if remote is not None:
            remote.client_writable()

    def lost(self, sock: _Socket) -> None:
        peer = self.core.peers.get(sock.id)
        held: str | None = None
        if peer is not None and peer.role is Role.CONTROL and peer.address is not None:
            held = peer.address if self.core.holder(peer.address) is peer else None
        super().lost(sock)
        self._gated.pop(sock.id, None)
        self._resume.pop(sock.id, None)
        self._node_links.discard(sock.id)
        remote = self._remote.pop(sock.id, None)
        if remote is not None:
            remote.client_gone()
        if held is not None and self.core.holder(held) is None:
            self._since.pop(held, None)
            self._unpublished.pop(held, None)
            quota = self.core.quotas.get(held) if self.config.hourly_bytes > 0 else None
            saved = snapshot(quota, self.now(), wall_ms()) if quota is not None else None
            self._spawn(self._withdraw(held, saved))

    async def _withdraw(self, address: str, quota: QuotaSnapshot | None) -> None:
        """The host left this node: its allowance is saved at once for the node it moves to
        (not at the next periodic save), then its directory entry goes."""
        with contextlib.suppress(StateUnavailable):
            if quota is not None:
                await self.state.save_quota(address, quota, QUOTA_TTL_SEC)
            await self.state.withdraw(address, self.node.id)

    # -- reports ------------------------------------------------------------------------------
    def cluster_status(self) -> dict[str, Any]:
        return {
            "node": self.node.id,
            "url": self.node.url,
            "state": "ok" if self.state_ok else "unreachable",
            **({"error": self.state_error} if not self.state_ok else {}),
            "liveNodes": len(self.live_nodes),
            "hostsHere": len(self.core.registered()),
            "remoteSplices": len(self._remote),
            "nodeLinks": len(self._node_links),
        }

    def _http(self, path: str, headers: Headers) -> tuple[int, str, bytes]:
        if path in ("/health", "/healthz"):
            body = {"status": "ok" if self.state_ok else "degraded"}
            body_json = json.dumps({**body, "cluster": self.cluster_status()}).encode()
            return (200 if self.state_ok else 503), "application/json", body_json
        status, kind, body_bytes = super()._http(path, headers)
        if path == "/metrics":
            return status, kind, body_bytes + self.cluster_metrics().encode()
        if path == "/v1/stats":
            stats = json.loads(body_bytes)
            stats["cluster"] = self.cluster_status()
            return status, kind, json.dumps(stats).encode()
        return status, kind, body_bytes

    def cluster_metrics(self) -> str:
        lines = [
            "# HELP keywire_link_cluster_state_up 1 if the shared state (Redis) answers.",
            "# TYPE keywire_link_cluster_state_up gauge",
            f"keywire_link_cluster_state_up {int(self.state_ok)}",
            "# HELP keywire_link_cluster_nodes Live nodes, as last seen.",
            "# TYPE keywire_link_cluster_nodes gauge",
            f"keywire_link_cluster_nodes {len(self.live_nodes)}",
            "# HELP keywire_link_cluster_remote_splices Clients spliced to another node now.",
            "# TYPE keywire_link_cluster_remote_splices gauge",
            f"keywire_link_cluster_remote_splices {len(self._remote)}",
            "# HELP keywire_link_cluster_remote_splices_total Clients spliced to another node.",
            "# TYPE keywire_link_cluster_remote_splices_total counter",
            f"keywire_link_cluster_remote_splices_total {self.remote_splices_total}",
            "# HELP keywire_link_cluster_node_links Links other nodes opened to this one now.",
            "# TYPE keywire_link_cluster_node_links gauge",
            f"keywire_link_cluster_node_links {len(self._node_links)}",
        ]
        return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=256)
def _ip_of(url: str) -> str:
    """The IP a node's links come from, as far as its URL tells (its host, resolved once)."""
    host = urlsplit(url).hostname or ""
    try:
        return socket.gethostbyname(host) if host and ":" not in host else host
    except OSError:
        return host


def _control(data: bytes) -> dict[str, Any] | None:
    """The control message in ``data``, if it is one the core would read."""
    if len(data) > MAX_CONTROL:
        return None
    return json_object(data)
