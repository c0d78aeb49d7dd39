"""Link relay cluster benchmarks, each against a single relay measured in the same run.

1. throughput: N MB on one mux stream, client and host on different nodes (client → node B
   → spliced → node A → host), against the same transfer through one single-process relay.
2. idle hosts: RSS per idle registered host on a cluster node (it also keeps a directory
   entry and a since-time per host), against a single relay holding the same hosts.
3. introductions per second with every host on node A: all clients at node A, against clients
   spread over three nodes (two of three spliced to A).

    PYTHONPATH=src .venv/bin/python bench/bench_link_cluster.py             # modest defaults
    PYTHONPATH=src .venv/bin/python bench/bench_link_cluster.py --size-mb 128 --hosts 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
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
from keywire.link.relayconn import introduce
from keywire.link.session import LinkPipe
from keywire.mux.connection import MuxConnection
from keywire.stream import Connection


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
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
        yield f"redis://127.0.0.1:{port}/0"
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


async def intros_per_sec(urls: list[str], addresses: list[str], total: int) -> float:
    semaphore = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        async with semaphore:
            ws = await introduce(urls[i % len(urls)], addresses[i % len(addresses)], 10)
            await ws.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    return total / (time.perf_counter() - started)


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


async def main(args: argparse.Namespace) -> None:
    size = args.size_mb * 1024 * 1024
    with redis_server() as redis_url:
        print(f"== throughput, {args.size_mb} MB, shaping off (best of {args.rounds})")
        single = max([await relayed_throughput(size) for _ in range(args.rounds)])
        cluster = max([await cross_node_throughput(redis_url, size) for _ in range(args.rounds)])
        print(f"one relay                    : {single / 1e6:8.1f} MB/s")
        print(f"cluster, client/host 2 nodes : {cluster / 1e6:8.1f} MB/s")
        print(f"ratio cluster/single         : {cluster / single:8.2f}  (goal >= 0.85)")

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
            print(f"== introductions, hosts at node A, {args.intros} each")
            local = await intros_per_sec(urls[:1], addresses, args.intros)
            spread = await intros_per_sec(urls, addresses, args.intros)
            print(f"clients at node A only       : {local:8.0f} /s")
            print(f"clients spread over 3 nodes  : {spread:8.0f} /s")
            print(f"ratio spread/one             : {spread / local:8.2f}")
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
    parser.add_argument("--intros", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
