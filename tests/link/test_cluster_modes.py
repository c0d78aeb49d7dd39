"""The relay cluster on a real Redis Cluster (three masters) and behind a real Sentinel.

``test_cluster.py`` runs the nodes on one standalone Redis; these runs check the other two
deployments ``--cluster`` accepts, where the client library differs (``RedisCluster`` routes
each key to its slot; ``Sentinel`` asks for the master first): two relay nodes share the
deployment, a host registered at one is paired and dialled through the other and echoes
byte-exact, and its register replayed at the other node is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keywire.link import client

from .conftest import RelayProcess
from .helpers import EchoHost, dial, echo_once
from .rawclient import RawHost, recv, send, ws
from .test_cluster import health, wait_for

pytestmark = pytest.mark.timeout(90)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 55000 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def redis_cli(port: int, *args: str, timeout: float = 10) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def wait_pong(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), 0.2) as s,
        ):
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis on port {port} did not start")


class Processes:
    """Every process a fixture started, killed at the end whatever happened."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.kill_all()


def plain_redis_args(port: int, workdir: Path) -> list[str]:
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]


@pytest.fixture
def redis_cluster_url(processes: Processes, tmp_path: Path) -> str:
    """Three masters on loopback, joined by ``redis-cli --cluster create``, all 16384 slots
    served (no replicas: the test is about slot routing, not failover)."""
    ports = []
    for i in range(3):
        port = cluster_port()
        workdir = tmp_path / f"redis{i}"
        workdir.mkdir()
        processes.start(
            *plain_redis_args(port, workdir),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(workdir / "nodes.conf"),
            "--cluster-node-timeout",
            "2000",
        )
        ports.append(port)
    for port in ports:
        wait_pong(port)
    created = redis_cli(
        ports[0],
        "--cluster",
        "create",
        *(f"127.0.0.1:{p}" for p in ports),
        "--cluster-replicas",
        "0",
        "--cluster-yes",
        timeout=30,
    )
    assert "All 16384 slots covered" in created, created
    deadline = time.monotonic() + 20
    while not all("cluster_state:ok" in redis_cli(p, "cluster", "info") for p in ports):
        assert time.monotonic() < deadline, "the Redis Cluster did not reach cluster_state:ok"
        time.sleep(0.2)
    return f"redis://127.0.0.1:{ports[0]}/0?cluster=1"


@pytest.fixture
def sentinel_url(processes: Processes, tmp_path: Path) -> str:
    """One master and one Sentinel watching it (``redis-server --sentinel``: the Debian
    package ships no separate redis-sentinel binary, the server runs in Sentinel mode)."""
    master = cluster_port()
    (tmp_path / "master").mkdir()
    processes.start(*plain_redis_args(master, tmp_path / "master"))
    wait_pong(master)
    port = cluster_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {tmp_path}\n"
        f"sentinel monitor keywire 127.0.0.1 {master} 1\n"
        "sentinel down-after-milliseconds keywire 5000\n"
    )
    processes.start("redis-server", str(conf), "--sentinel")
    wait_pong(port)
    deadline = time.monotonic() + 10
    while str(master) not in redis_cli(port, "sentinel", "get-master-addr-by-name", "keywire"):
        assert time.monotonic() < deadline, "the Sentinel does not know its master"
        time.sleep(0.1)
    return f"redis+sentinel://127.0.0.1:{port}/keywire"


async def reach_and_refuse_replay(nodes: list[RelayProcess], tmp_path: Path) -> str:
    """A host at node 0 is paired and dialled through node 1 (spliced) and echoes byte-exact;
    its register replayed at node 1 is refused; both nodes report the shared state ok.
    Returns the replayed host's address."""
    for node in nodes:
        await wait_for(functools.partial(_cluster_ok, node), 10, step=0.2)
    host = await EchoHost([nodes[0].url], tmp_path / "host").start()
    try:
        address = host.host.address
        assert host.code is not None
        # the directory entry is published right after the register; wait until node 1 sees it
        await client.pair(f"{nodes[1].url}~link:{address}", host.code)
        for size in (1, 65_537, 700_001):
            payload = os.urandom(size)
            conn = await dial(f"{nodes[1].url}~link:{address}")
            try:
                assert await echo_once(conn, payload) == payload, size
            finally:
                await conn.close()
    finally:
        await host.close()
    status, body = await health(nodes[1])
    assert status == 200 and body["cluster"]["liveNodes"] == 2
    metrics = await asyncio.to_thread(
        lambda: urllib.request.urlopen(nodes[1].http + "/metrics", timeout=3).read().decode()
    )
    spliced = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("keywire_link_cluster_remote_splices_total ")
    ]
    assert spliced and int(spliced[0].split()[1]) >= 4  # the pairing and three dials

    raw = RawHost()
    name = nodes[0].url  # one origin for both nodes, as a shared DNS name gives
    message = raw.register(name)
    first = await ws(name, sock=socket.create_connection(("127.0.0.1", nodes[0].port)))
    await send(first, message)
    assert (await recv(first))["type"] == "registered"
    replay = await ws(name, sock=socket.create_connection(("127.0.0.1", nodes[1].port)))
    await send(replay, message)
    assert await recv(replay) == {"type": "error", "error": "register_stale"}
    for sock in (first, replay):
        await sock.close()
    return raw.address


async def _cluster_ok(node: RelayProcess) -> bool:
    status, body = await health(node)
    return status == 200 and body["cluster"]["state"] == "ok"


async def test_nodes_share_a_three_master_redis_cluster(
    redis_cluster_url: str, relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    async with asyncio.timeout(60):
        nodes = [relay_factory("--cluster", redis_cluster_url, "--max-bps", "0") for _ in range(2)]
        address = await reach_and_refuse_replay(nodes, tmp_path)
    # the pin lives in the Redis Cluster (redis-cli -c follows the slot to its master)
    port = redis_cluster_url.split(":")[2].split("/")[0]
    pin = await asyncio.to_thread(
        redis_cli, int(port), "-c", "hget", f"keywire:link:pin:{address}", "key"
    )
    assert pin.strip(), pin


async def test_nodes_share_a_redis_behind_sentinel(
    sentinel_url: str, relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    async with asyncio.timeout(60):
        nodes = [relay_factory("--cluster", sentinel_url, "--max-bps", "0") for _ in range(2)]
        await reach_and_refuse_replay(nodes, tmp_path)
