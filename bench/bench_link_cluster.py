"""Link relay cluster benchmarks, each against a single relay measured in the same run.

1. throughput: N MB on one mux stream, client and host on different nodes (client → node B
   → spliced → node A → host), against the same transfer through one single-process relay.
2. idle hosts: RSS per idle registered host on a cluster node (it also keeps a directory
   entry and a since-time per host), against a single relay holding the same hosts.
3. introductions (``--only intros``): for each layout — one node; three nodes with every host at
   node A; three nodes with host i at node i mod 3; the same with each client at its host's node
   (what a redirect would leave) — introductions per second, CPU seconds per introduction of
   every process (/proc utime+stime, idle background subtracted) and Redis calls per
   introduction (INFO commandstats). From the busiest node's CPU per introduction: the capacity
   a cluster with a core per node would have (derived, not measured).
4. pinned (``--only pinned``): one node on core 0 vs two nodes on cores 0 and 1, hosts spread,
   alternating rounds; clients, hosts and Redis float over both cores.

    PYTHONPATH=src .venv/bin/python bench/bench_link_cluster.py             # modest defaults
    PYTHONPATH=src .venv/bin/python bench/bench_link_cluster.py --size-mb 128 --hosts 5000
    PYTHONPATH=src .venv/bin/python bench/bench_link_cluster.py --only intros,pinned
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from bench_link import (
    _spawn_worker,
    relay_kb_per_host,
    relayed_throughput,
    rss_kb,
    start_relay,
    transfer,
)
from keywire.link import client
from keywire.link.host import LinkHost
from keywire.link.relayconn import introduce, register_message
from keywire.link.session import LinkPipe
from keywire.link.wire import address_for_register_key
from keywire.mux.connection import MuxConnection
from keywire.stream import Connection


@dataclass(frozen=True)
class RedisProc:
    url: str
    pid: int


@contextlib.contextmanager
def redis_server() -> Iterator[RedisProc]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"PING\r\n")
                if c.recv(8).startswith(b"+PONG"):
                    break
            time.sleep(0.05)
        yield RedisProc(f"redis://127.0.0.1:{port}/0", proc.pid)
    finally:
        proc.kill()
        proc.wait()


def open_flags(count: int) -> list[str]:
    """Every test socket comes from 127.0.0.1: lift the per-IP shares to the count."""
    share = str(count + 64)
    return [
        "--ip-rate-per-min",
        "0",
        "--max-bps",
        "0",
        "--max-sockets-per-ip",
        share,
        "--max-upgrading-per-ip",
        share,
    ]


def start_nodes(
    redis_url: str, n: int, count: int = 0
) -> list[tuple[subprocess.Popen[bytes], str]]:
    return [start_relay("--cluster", redis_url, *open_flags(count)) for _ in range(n)]


def stop(procs: list[tuple[subprocess.Popen[bytes], str]]) -> None:
    for proc, _ in procs:
        proc.kill()
        proc.wait()


async def cross_node_throughput(redis_url: str, size: int) -> float:
    nodes = start_nodes(redis_url, 2)
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def on_pipe(pipe: LinkPipe) -> None:
        await accepted.put(MuxConnection(pipe, client=False))
        await pipe.closed.wait()

    try:
        with tempfile.TemporaryDirectory() as tmp:
            host = LinkHost(X25519PrivateKey.generate(), on_pipe, Path(tmp))
            try:
                await host.add_relay(nodes[0][1])  # the host at node A
                address = f"{nodes[1][1]}~link:{host.address}"  # the client at node B
                credential, _ = await client.pair(
                    address, host.open_pairing_code().code, store_dir=Path(tmp) / "c"
                )
                await (await accepted.get()).close()
                pipe = await client.connect(address, credential=credential)
                conn = MuxConnection(pipe, client=True)
                seconds = await transfer(conn, await accepted.get(), size)
                await conn.close()
            finally:
                await host.close()
    finally:
        stop(nodes)
    return size / seconds


async def node_kb_per_host(redis_url: str, count: int) -> tuple[float, list[str], list[str]]:
    """KB per idle host on node A of three; also returns the node URLs and some addresses
    (the caller stops the worker and nodes through ``_cleanup``)."""
    nodes = start_nodes(redis_url, 3, count)
    _cleanup.extend(nodes)
    await asyncio.sleep(1.0)
    before = rss_kb(nodes[0][0].pid)
    worker, info = await _spawn_worker(nodes[0][1], count, "link")
    _workers.append(worker)
    await asyncio.sleep(2.5)  # a few heartbeats: the directory is published
    after = rss_kb(nodes[0][0].pid)
    return (after - before) / count, [url for _, url in nodes], info["addresses"]


_cleanup: list[tuple[subprocess.Popen[bytes], str]] = []
_workers: list[subprocess.Popen[bytes]] = []


async def median_ms(make: Callable[[], Awaitable[None]], count: int) -> float:
    times: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        await make()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def introduction_latency(urls: list[str], address: str, count: int) -> dict[str, float]:
    """Median ms, one at a time: an introduction at the host's node, one through another node
    (splice), and a resolve answered at once (what a redirect would cost before the client
    starts over at the host's node)."""

    async def intro(url: str) -> None:
        ws = await introduce(url, address, 10)
        await ws.close()

    async def bounce() -> None:
        ws = await connect(urls[1], compression=None)
        await ws.send(json.dumps({"type": "resolve", "address": "x" * 43}))
        await ws.recv()
        await ws.close()

    return {
        "local": await median_ms(lambda: intro(urls[0]), count),
        "splice": await median_ms(lambda: intro(urls[1]), count),
        "bounce": await median_ms(bounce, count),
    }


# -- 3. introductions: what each costs each process, and what the machine allows ------------


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process so far (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_calls(redis_url: str) -> dict[str, int]:
    """Calls per command so far (INFO commandstats), without the INFO calls themselves."""
    client = Redis.from_url(redis_url)
    try:
        stats: dict[str, Any] = await client.info("commandstats")
    finally:
        await client.aclose()
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name != "cmdstat_info"
    }


async def _hosts_worker(urls: list[str], count: int) -> None:
    """Register ``count`` hosts, host i at node i mod len(urls), answer every introduction
    with a dial-back to that node, print the addresses, keep them until stdin closes."""
    semaphore = asyncio.Semaphore(100)
    tasks: set[asyncio.Task[None]] = set()
    addresses: list[str] = [""] * count
    sockets = []

    async def dial_back(url: str, message: dict[str, str]) -> None:
        async with connect(url, compression=None) as ws:
            accept = {"type": "accept", "linkId": message["linkId"], "ticket": message["ticket"]}
            await ws.send(json.dumps(accept))
            await ws.recv()

    async def control(url: str, ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "relay":
                task = asyncio.create_task(dial_back(url, message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def one(i: int) -> None:
        url = urls[i % len(urls)]
        key = Ed25519PrivateKey.generate()
        address = address_for_register_key(key.public_key().public_bytes_raw())
        async with semaphore:
            ws = await connect(url, compression=None, ping_interval=None)
            await ws.send(json.dumps(register_message(key, address, url)))
            assert json.loads(await ws.recv())["type"] == "registered"
        addresses[i] = address
        sockets.append(ws)
        tasks.add(asyncio.create_task(control(url, ws)))

    await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps({"addresses": addresses}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def spawn_hosts(urls: list[str], count: int) -> tuple[subprocess.Popen[bytes], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--hosts-worker", ",".join(urls), "--hosts", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    return proc, json.loads(line)["addresses"]


IDLE_WINDOW_SEC = 2.0
#: what an introduction itself sends to Redis (resolve at a node that does not hold the host:
#: HGETALL, and GET of a node's key; the per-IP window: EVALSHA); the rest is heartbeats and
#: the directory's periodic republish, counted but not per introduction
PATH_COMMANDS = frozenset({"hgetall", "get", "evalsha"})


@dataclass
class IntroRun:
    """One measured batch of introductions in one layout."""

    label: str
    rate: float  # introductions per second, as the bench client saw them
    cpu: dict[str, float]  # CPU seconds per introduction, per process
    calls: dict[str, float]  # Redis calls per introduction, per command
    load: float  # 1-minute load average at the end

    @property
    def busiest_node(self) -> float:
        return max(v for k, v in self.cpu.items() if k.startswith("node"))


async def intro_run(
    redis: RedisProc,
    nodes: int,
    hosts_at: str,
    hosts: int,
    total: int,
    cores: list[set[int]] | None = None,
    home: bool = False,
) -> IntroRun:
    """``total`` introductions, 20 at a time, each to a random host through a random node
    (``home``: through the host's own node, what a redirect would leave).
    ``hosts_at``: "A" (every host at node A) or "spread" (host i at node i mod N)."""
    started_nodes = start_nodes(redis.url, nodes, hosts)
    procs: dict[str, int] = {
        f"node{'ABCDEFGH'[i]}": p.pid for i, (p, _) in enumerate(started_nodes)
    }
    if cores is not None:
        for (proc, _), core_set in zip(started_nodes, cores, strict=True):
            os.sched_setaffinity(proc.pid, core_set)
    urls = [url for _, url in started_nodes]
    worker: subprocess.Popen[bytes] | None = None
    try:
        worker, addresses = await spawn_hosts(urls if hosts_at == "spread" else urls[:1], hosts)
        procs |= {"hosts": worker.pid, "redis": redis.pid, "client": os.getpid()}
        await asyncio.sleep(1.5)  # heartbeats: every node has seen the others
        # background (heartbeats, sweeps) over an idle window, subtracted below
        idle_cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
        idle_calls0 = await redis_calls(redis.url)
        await asyncio.sleep(IDLE_WINDOW_SEC)
        idle_cpu = {
            n: (cpu_seconds(pid) - idle_cpu0[n]) / IDLE_WINDOW_SEC for n, pid in procs.items()
        }
        idle_calls1 = await redis_calls(redis.url)
        idle_calls = {
            k: (n - idle_calls0.get(k, 0)) / IDLE_WINDOW_SEC for k, n in idle_calls1.items()
        }
        pick = random.Random(nodes * 1000 + total)
        plan = []
        for _ in range(total):
            i = pick.randrange(len(addresses))
            at = urls[i % nodes if hosts_at == "spread" else 0] if home else pick.choice(urls)
            plan.append((at, addresses[i]))
        semaphore = asyncio.Semaphore(20)

        async def one(url: str, address: str) -> None:
            async with semaphore:
                ws = await introduce(url, address, 10)
                await ws.close()

        cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
        calls0 = await redis_calls(redis.url)
        began = time.perf_counter()
        await asyncio.gather(*(one(url, address) for url, address in plan))
        seconds = time.perf_counter() - began
        cpu1 = {name: cpu_seconds(pid) for name, pid in procs.items()}
        calls1 = await redis_calls(redis.url)
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        stop(started_nodes)
    calls = {
        k: max(0.0, n - calls0.get(k, 0) - idle_calls.get(k, 0.0) * seconds) / total
        for k, n in calls1.items()
    }
    where = "at A" if hosts_at == "A" else "spread"
    label = f"{nodes} node{'s' if nodes > 1 else ''}, hosts {where}"
    label += ", clients at home" if home and nodes > 1 else ""
    return IntroRun(
        label,
        total / seconds,
        {
            name: max(0.0, cpu1[name] - cpu0[name] - idle_cpu[name] * seconds) / total
            for name in procs
        },
        calls,
        os.getloadavg()[0],
    )


def show(run: IntroRun) -> None:
    nodes = " ".join(f"{k[-1]} {v * 1e3:5.2f}" for k, v in run.cpu.items() if k.startswith("node"))
    others = " ".join(f"{k} {run.cpu[k] * 1e3:5.2f}" for k in ("client", "hosts", "redis"))
    path = sum(v for k, v in run.calls.items() if k in PATH_COMMANDS)
    detail = ", ".join(f"{k} {v:.2f}" for k, v in sorted(run.calls.items()) if v >= 0.02)
    print(
        f"{run.label:24}: {run.rate:6.0f} /s | CPU ms/intro nodes {nodes} | {others}"
        f" | Redis {path:.2f}/intro on the path (all: {detail}) | load {run.load:.1f}"
    )


async def introductions(redis: RedisProc, args: argparse.Namespace) -> None:
    print(f"== introductions: {args.intro_hosts} hosts, {args.intros} per run, 20 at a time")
    runs: list[IntroRun] = []
    for _ in range(args.intro_rounds):
        for nodes, hosts_at, home in (
            (1, "A", False),
            (3, "A", False),
            (3, "spread", False),
            (3, "spread", True),
        ):
            run = await intro_run(redis, nodes, hosts_at, args.intro_hosts, args.intros, home=home)
            runs.append(run)
            show(runs[-1])
    print("-- derived, not measured: capacity with a core per node (and Redis, hosts and clients")
    print("   elsewhere) = 1 / CPU seconds per introduction of the busiest node")
    labels = list(dict.fromkeys(run.label for run in runs))
    for label in labels:
        mine = [run for run in runs if run.label == label]
        busiest = statistics.median(run.busiest_node for run in mine)
        rate = statistics.median(run.rate for run in mine)
        print(
            f"{label:24}: measured {rate:5.0f} /s (median), derived {1 / busiest:5.0f} /s"
            f" (busiest node {busiest * 1e3:.2f} ms/intro, median)"
        )


async def pinned(redis: RedisProc, args: argparse.Namespace) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        print("== pinned: needs two cores this process may use; not measured")
        return
    print(
        f"== pinned: node(s) on their own core (1 node: core 0; 2 nodes: cores 0 and 1),"
        f" hosts spread, {args.intros} per run; client, hosts and Redis unpinned"
    )
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.pinned_rounds):
        for nodes in (1, 2):
            run = await intro_run(
                redis, nodes, "spread", args.intro_hosts, args.intros, [{i} for i in range(nodes)]
            )
            rates[nodes].append(run.rate)
            show(run)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median 1 node {one:.0f} /s, 2 nodes {two:.0f} /s, ratio {two / one:.2f}")


async def main(args: argparse.Namespace) -> None:
    with redis_server() as redis:
        if "throughput" in args.only:
            await throughput(redis.url, args)
        if "memory" in args.only:
            await memory_and_latency(redis.url, args)
        if "intros" in args.only:
            await introductions(redis, args)
        if "pinned" in args.only:
            await pinned(redis, args)


async def throughput(redis_url: str, args: argparse.Namespace) -> None:
    size = args.size_mb * 1024 * 1024
    print(f"== throughput, {args.size_mb} MB, shaping off (best of {args.rounds})")
    single = max([await relayed_throughput(size) for _ in range(args.rounds)])
    cluster = max([await cross_node_throughput(redis_url, size) for _ in range(args.rounds)])
    print(f"one relay                    : {single / 1e6:8.1f} MB/s")
    print(f"cluster, client/host 2 nodes : {cluster / 1e6:8.1f} MB/s")
    print(f"ratio cluster/single         : {cluster / single:8.2f}  (goal >= 0.85)")


async def memory_and_latency(redis_url: str, args: argparse.Namespace) -> None:
    print(f"== {args.hosts} idle registered hosts")
    single_kb, relay, _url, _addresses, worker = await relay_kb_per_host(args.hosts)
    worker.kill()
    relay.kill()
    worker.wait()
    relay.wait()
    try:
        node_kb, urls, addresses = await node_kb_per_host(redis_url, args.hosts)
        print(f"single relay                 : {single_kb:8.1f} KB per idle host")
        print(f"cluster node                 : {node_kb:8.1f} KB per idle host (goal <= 10)")
        print(f"ratio node/single            : {node_kb / single_kb:8.2f}")
        lat = await introduction_latency(urls, addresses[0], args.latency)
        print(f"== introduction latency, median of {args.latency}, one at a time")
        print(f"at the host's node           : {lat['local']:8.2f} ms")
        print(f"through another node (splice): {lat['splice']:8.2f} ms")
        print(f"a redirect (bounce + local)  : {lat['bounce'] + lat['local']:8.2f} ms")
    finally:
        for proc in _workers:
            proc.kill()
            proc.wait()
        stop(_cleanup)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=32)
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--intros", type=int, default=600, help="introductions per run")
    parser.add_argument("--intro-hosts", type=int, default=300, help="hosts in the intro runs")
    parser.add_argument("--intro-rounds", type=int, default=2)
    parser.add_argument("--pinned-rounds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency", type=int, default=50)
    parser.add_argument(
        "--only",
        default="throughput,memory,intros,pinned",
        help="comma-separated sections: throughput, memory, intros, pinned",
    )
    parser.add_argument("--hosts-worker", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.hosts_worker:
        asyncio.run(_hosts_worker(arguments.hosts_worker.split(","), arguments.hosts))
    else:
        arguments.only = set(arguments.only.split(","))
        asyncio.run(main(arguments))
    sys.exit(0)
