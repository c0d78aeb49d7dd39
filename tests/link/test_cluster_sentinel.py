"""The relay cluster through a Sentinel failover: the master dies, a replica is promoted.

One master with one replica (both with an append-only file) and three Sentinels watch them; two
relay nodes reach Redis only through the Sentinels (``redis+sentinel://``). ``kill -9`` of the
master must cost the cluster only the outage Sentinel needs to promote the replica: while it
lasts the nodes keep their sessions, refuse what they cannot check and say so on ``/health``
and ``/metrics``; after it they find the new master on their own (redis-py's Sentinel client
asks the Sentinels again on every new connection), the host stays reachable from both nodes,
and what Redis held for the cluster (a register's pin, a host's hourly quota) still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keywire.link import client

from .conftest import RelayProcess
from .helpers import EchoHost, dial, echo_once
from .rawclient import RawHost, close_code, recv, send, ws
from .test_cluster import alt, health, wait_for
from .test_cluster_modes import Processes, cluster_port, redis_cli, wait_pong

pytestmark = pytest.mark.timeout(120)

SERVICE = "keywire"
#: how long a master may not answer before a Sentinel calls it down, and the failover's bound
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
#: the node's heartbeat (``cluster.node.HEARTBEAT_SEC``): it notices the new master on its next beat
HEARTBEAT_SEC = 1.0
#: spent before the failover: the host is throttled afterwards, at whichever node it is
HOURLY_BYTES = 800_000
TRICKLE_BPS = 20_000


def redis_args(port: int, workdir: Path, *more: str) -> list[str]:
    """A redis-server with an append-only file (what the docs tell operators to run)."""
    workdir.mkdir()
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "no",
        *more,
    ]


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` of the Redis on ``port`` as a dict (empty if it does not answer)."""
    lines = redis_cli(port, "info", section).splitlines()
    return dict(ln.strip().split(":", 1) for ln in lines if ":" in ln and not ln.startswith("#"))


@dataclass
class SentinelDeployment:
    """Master, replica and three Sentinels on loopback."""

    master: int
    replica: int
    sentinels: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def master_port(self, sentinel: int) -> int | None:
        """The master's port as ``sentinel`` names it now."""
        out = redis_cli(sentinel, "sentinel", "get-master-addr-by-name", SERVICE).split()
        return int(out[1]) if len(out) == 2 and out[1].isdigit() else None

    def replicated(self, key: str, field: str | None = None) -> bool:
        """``key`` (or its hash ``field``) reads the same on the replica as on the master
        (replication is asynchronous: a write not yet copied when the master dies is lost)."""
        args = ("hget", key, field) if field is not None else ("get", key)
        on_master = redis_cli(self.master, *args).strip()
        return bool(on_master) and redis_cli(self.replica, *args).strip() == on_master


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def _sentinel_ready(port: int, replica: int) -> bool:
    return "3 usable" in redis_cli(port, "sentinel", "ckquorum", SERVICE) and str(
        replica
    ) in redis_cli(port, "sentinel", "replicas", SERVICE)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.kill_all()


@pytest.fixture
def deployment(processes: Processes, tmp_path: Path) -> SentinelDeployment:
    master, replica = cluster_port(), cluster_port()
    processes.start(*redis_args(master, tmp_path / "master"))
    wait_pong(master)
    replica_args = redis_args(
        replica, tmp_path / "replica", "--replicaof", "127.0.0.1", str(master)
    )
    processes.start(*replica_args)
    wait_pong(replica)
    found = SentinelDeployment(master, replica)
    wait_until(
        lambda: info(replica, "replication").get("master_link_status") == "up", 10, "replica link"
    )
    for i in range(3):
        port = cluster_port()
        workdir = tmp_path / f"sentinel{i}"
        workdir.mkdir()
        conf = workdir / "sentinel.conf"  # Sentinel rewrites it: one writable file each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        processes.start("redis-server", str(conf), "--sentinel")
        found.sentinels.append(port)
    for port in found.sentinels:
        wait_pong(port)
    # each Sentinel must know the replica and the two others (hello messages every 2 s),
    # or a failover could not be authorised and the test would wait for nothing
    for port in found.sentinels:
        wait_until(
            functools.partial(_sentinel_ready, port, replica),
            20,
            f"Sentinel {port} sees the replica and two other Sentinels",
        )
    return found


async def metric(node: RelayProcess, name: str) -> float:
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(node.http + "/metrics", timeout=3).read().decode()
    )
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the master was stopped
    status: int  # /health's HTTP status (0: no answer)
    error: str  # /health's cluster.error
    up: float  # /metrics' keywire_link_cluster_state_up (-1: no answer)


class HealthWatch:
    """Polls ``/health`` and ``/metrics`` of every node every 0.1 s; remembers the answers."""

    def __init__(self, nodes: list[RelayProcess], since: float) -> None:
        self.nodes = nodes
        self.since = since
        self.seen: list[list[Sample]] = [[] for _ in nodes]
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            for i, node in enumerate(self.nodes):
                at = time.monotonic() - self.since
                try:
                    status, body = await health(node)
                    up = await metric(node, "keywire_link_cluster_state_up")
                except OSError as exc:  # no answer at all: recorded, never mistaken for 200
                    status, body, up = 0, {"cluster": {"error": str(exc)}}, -1.0
                error = str(body.get("cluster", {}).get("error", ""))
                self.seen[i].append(Sample(at, status, error, up))
            await asyncio.sleep(0.1)

    def outage(self, i: int) -> tuple[float, float] | None:
        """When node ``i`` first answered 503, and when it answered 200 again after that."""
        down = next((s.at for s in self.seen[i] if s.status == 503), None)
        if down is None:
            return None
        up = next((s.at for s in self.seen[i] if s.status == 200 and s.at > down), None)
        return (down, up) if up is not None else None

    def healthy_again(self) -> bool:
        return all(self.outage(i) is not None for i in range(len(self.nodes)))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["kill-9", "hung"])
async def test_master_killed_replica_promoted_nodes_carry_on(
    deployment: SentinelDeployment,
    processes: Processes,
    relay_factory: Callable[..., RelayProcess],
    tmp_path: Path,
    how: signal.Signals,
) -> None:
    async with asyncio.timeout(100):
        flags = ["--max-bps", "0", "--hourly-bytes", str(HOURLY_BYTES)]
        flags += ["--trickle-bps", str(TRICKLE_BPS)]
        nodes = [relay_factory("--cluster", deployment.url, *flags) for _ in range(2)]
        with logs_on_failure(nodes):
            await _failover(deployment, processes, nodes, tmp_path, how)


@contextlib.contextmanager
def logs_on_failure(nodes: list[RelayProcess]) -> Iterator[None]:
    """The nodes' own account of a failure, in the test's output."""
    try:
        yield
    except BaseException:
        for i, node in enumerate(nodes):
            print(f"--- node {i} log (last 4000 characters) ---\n{node.stderr_text()[-4000:]}")
        raise


async def _failover(
    deployment: SentinelDeployment,
    processes: Processes,
    nodes: list[RelayProcess],
    tmp_path: Path,
    how: signal.Signals,
) -> None:
    """Everything after the nodes are up (see the module's docstring)."""
    for node in nodes:
        await wait_for(functools.partial(_ok, node), 10, step=0.2)
    host = await EchoHost([nodes[0].url], tmp_path / "host").start()
    watch: HealthWatch | None = None
    try:
        address = host.host.address
        assert host.code is not None
        await client.pair(alt(nodes[1], address), host.code)
        spliced = await dial(alt(nodes[1], address))  # node 1 → node 0, the host's node
        small = os.urandom(2000)
        assert await echo_once(spliced, small) == small
        # spend the host's hour at its node (840 kB both ways), so the quota matters later
        spend = await dial(alt(nodes[0], address))
        payload = os.urandom(420_000)
        assert await echo_once(spend, payload) == payload
        await spend.close()
        # a register whose replay must stay refused after the failover
        raw = RawHost()
        name = nodes[0].url  # one origin for both nodes, as a shared DNS name gives
        message = raw.register(name)
        first = await _ws_at(nodes[0], name)
        await send(first, message)
        assert (await recv(first))["type"] == "registered"
        quota_key = f"keywire:link:quota:{address}"
        await asyncio.to_thread(
            wait_until,
            lambda: "true" in redis_cli(deployment.master, "get", quota_key),
            8,
            "the throttled quota saved in Redis",
        )
        pin_key = f"keywire:link:pin:{raw.address}"
        for key, hash_field in ((pin_key, "ts"), (quota_key, None)):
            await asyncio.to_thread(
                wait_until,
                functools.partial(deployment.replicated, key, hash_field),
                5,
                f"{key} copied to the replica",
            )

        processes.procs[0].send_signal(how)  # the master dies, or hangs (SIGSTOP)
        killed = time.monotonic()
        watch = HealthWatch(nodes, killed)
        # at once (Sentinel needs DOWN_AFTER_MS to even suspect it): what the nodes cannot
        # check is refused with a reason, the sessions they have go on
        refused = await _ws_at(nodes[1], name)
        await send(refused, RawHost().register(name))
        assert await close_code(refused) == 1013
        assert "cluster state unavailable" in (refused.close_reason or "")
        assert await echo_once(spliced, small) == small
        await asyncio.to_thread(
            wait_until,
            lambda: all(
                deployment.master_port(p) == deployment.replica for p in deployment.sentinels
            ),
            15,
            "Sentinels promote the replica",
        )
        promoted = time.monotonic() - killed
        # Sentinel's own bound, then one heartbeat for the node to notice, and 1 s of slack
        bound = (DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS) / 1000 + HEARTBEAT_SEC + 1.0
        await wait_for(watch.healthy_again, bound - (time.monotonic() - killed))
        took = time.monotonic() - killed
        outages = [watch.outage(i) for i in range(len(nodes))]
        print(
            f"sentinel failover: promoted {promoted:.2f} s after {how.name}, both nodes "
            f"healthy again {took:.2f} s after it; per node 503 from - 200 again at: "
            + ", ".join(f"{o[0]:.2f}-{o[1]:.2f} s" for o in outages if o is not None)
        )
        for node in nodes:
            status, body = await health(node)
            assert status == 200 and body["cluster"]["liveNodes"] == 2

        # what the old master held came over with the replica
        replay = await _ws_at(nodes[1], name)
        await send(replay, message)
        assert await recv(replay) == {"type": "error", "error": "register_stale"}
        await replay.close()
        assert "true" in redis_cli(deployment.replica, "get", quota_key)
        # the host is reachable through both nodes, by new dials and by the old session
        for entry in nodes:
            conn = await dial(alt(entry, address))
            assert await echo_once(conn, small) == small
            await conn.close()
        assert await echo_once(spliced, small) == small
        await spliced.close()
        # a fresh register is taken again (the pin's compare-and-set runs on the new master)
        fresh = await _ws_at(nodes[1], name)
        await send(fresh, raw.register(name))
        assert (await recv(fresh))["type"] == "registered"
        for sock in (first, fresh):
            await sock.close()
        await watch.stop()
        for i, samples in enumerate(watch.seen):
            outage = watch.outage(i)
            assert outage is not None, f"node {i} never reported the outage"
            during = [s for s in samples if s.status == 503]
            assert all("Redis unreachable" in s.error for s in during), during
            assert any(s.up == 0 for s in samples if s.at < outage[1]), "metrics said up"
            # once back, it stays back: no late failure of a call stuck on the old master
            after = [s for s in samples if s.at >= outage[1]]
            assert all(s.status == 200 and s.up == 1 for s in after), after

        # the host moves to node 1: it brings the hour it spent before the failover
        await host.host.remove_relay(nodes[0].url)
        await host.host.add_relay(nodes[1].url)
        moved = await dial(alt(nodes[1], address))
        started = time.monotonic()
        payload = os.urandom(100_000)
        assert await echo_once(moved, payload) == payload
        slow = time.monotonic() - started
        await moved.close()
        # 200 kB at the 20 kB/s trickle take seconds; a fresh allowance passes them at once
        assert slow > 1.5, f"not throttled at node 1 after the failover ({slow:.2f} s)"
    finally:
        if watch is not None:
            await watch.stop()
        await host.close()


async def _ok(node: RelayProcess) -> bool:
    status, body = await health(node)
    return status == 200 and body["cluster"]["state"] == "ok"


async def _ws_at(node: RelayProcess, as_url: str):  # type: ignore[no-untyped-def]
    return await ws(as_url, sock=socket.create_connection(("127.0.0.1", node.port)))


async def test_pins_survive_a_redis_restart_with_persistence(
    processes: Processes, relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """Heartbeats restore the directory after any restart; a register's pin comes back only
    from Redis's own disk. With an append-only file, a register replayed at another node after
    Redis was killed and restarted is still refused, and the nodes recover on their own."""
    async with asyncio.timeout(60):
        port = cluster_port()
        argv = redis_args(port, tmp_path / "redis", "--appendfsync", "always")
        processes.start(*argv)
        wait_pong(port)
        url = f"redis://127.0.0.1:{port}/0"
        nodes = [relay_factory("--cluster", url, "--max-bps", "0") for _ in range(2)]
        with logs_on_failure(nodes):
            for node in nodes:
                await wait_for(functools.partial(_ok, node), 10, step=0.2)
            raw = RawHost()
            name = nodes[0].url
            message = raw.register(name)
            first = await _ws_at(nodes[0], name)
            await send(first, message)
            assert (await recv(first))["type"] == "registered"
            await first.close()

            processes.procs[0].kill()  # kill -9: only what the file has survives
            processes.procs[0].wait(5)
            for node in nodes:
                await wait_for(functools.partial(_status_is, node, 503), 5)
            processes.start(*argv)
            await asyncio.to_thread(wait_pong, port)
            back = max([await wait_for(functools.partial(_ok, node), 5) for node in nodes])
            print(f"redis restart with AOF: nodes healthy again {back:.2f} s after it answers")

            replay = await _ws_at(nodes[1], name)
            await send(replay, message)
            assert await recv(replay) == {"type": "error", "error": "register_stale"}
            await replay.close()
            fresh = await _ws_at(nodes[1], name)
            await send(fresh, raw.register(name))
            assert (await recv(fresh))["type"] == "registered"
            await fresh.close()


async def _status_is(node: RelayProcess, code: int) -> bool:
    return (await health(node))[0] == code
