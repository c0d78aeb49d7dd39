"""Link benchmarks, each a ratio against a reference measured in the same run.

1. throughput: N MB over one mux stream through a relay process (shaping off), against the
   same stack (sealed LinkPipe + mux) over a direct WebSocket.
2. idle hosts: relay memory per registered idle host, against a bare ``websockets`` server
   holding the same number of idle connections; and introductions per second, against plain
   WebSocket handshakes per second to the same relay.

    PYTHONPATH=src .venv/bin/python bench/bench_link.py                # modest defaults
    PYTHONPATH=src .venv/bin/python bench/bench_link.py --size-mb 256 --hosts 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from keywire.link import client
from keywire.link.host import LinkHost
from keywire.link.noise import CipherState
from keywire.link.relayconn import introduce
from keywire.link.sealed import SealedChannel
from keywire.link.session import LinkPipe
from keywire.mux.connection import MuxConnection
from keywire.stream import Connection

HERE = Path(__file__).resolve()
CHUNK = 256 * 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_relay(*flags: str) -> tuple[subprocess.Popen[bytes], str]:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "keywire.link.relay", "--host", "127.0.0.1", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


# -- 1. throughput ---------------------------------------------------------------------------


async def transfer(conn_client: Connection, conn_server: Connection, size: int) -> float:
    """Seconds to move ``size`` bytes client → server on one stream (until FIN is read)."""
    block = secrets.token_bytes(CHUNK)

    async def sink() -> int:
        stream = await conn_server.accept_stream()
        got = 0
        while chunk := await stream.read():
            got += len(chunk)
        return got

    sink_task = asyncio.create_task(sink())
    stream = await conn_client.open_stream()
    started = time.perf_counter()
    sent = 0
    while sent < size:
        await stream.write(block)
        sent += len(block)
    await stream.close_write()
    got = await sink_task
    elapsed = time.perf_counter() - started
    assert got == sent, (got, sent)
    return elapsed


async def direct_throughput(size: int) -> float:
    keys = (secrets.token_bytes(32), secrets.token_bytes(32))
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        channel = SealedChannel(CipherState(keys[1]), CipherState(keys[0]))
        pipe = LinkPipe(ws, channel, "direct")
        await accepted.put(MuxConnection(pipe, client=False))
        await pipe.closed.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=1 << 20)
        pipe = LinkPipe(ws, SealedChannel(CipherState(keys[0]), CipherState(keys[1])), "direct")
        conn = MuxConnection(pipe, client=True)
        seconds = await transfer(conn, await accepted.get(), size)
        await conn.close()
    return size / seconds


async def relayed_throughput(size: int) -> float:
    proc, url = start_relay("--max-bps", "0", "--ip-rate-per-min", "0")
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def on_pipe(pipe: LinkPipe) -> None:
        await accepted.put(MuxConnection(pipe, client=False))
        await pipe.closed.wait()

    with tempfile.TemporaryDirectory() as tmp:
        host = LinkHost(X25519PrivateKey.generate(), on_pipe, Path(tmp))
        try:
            await host.add_relay(url)
            address = f"{url}~link:{host.address}"
            credential, _ = await client.pair(
                address, host.open_pairing_code().code, store_dir=Path(tmp) / "c"
            )
            await (await accepted.get()).close()  # the pairing session's connection
            pipe = await client.connect(address, credential=credential)
            conn = MuxConnection(pipe, client=True)
            seconds = await transfer(conn, await accepted.get(), size)
            await conn.close()
        finally:
            await host.close()
            proc.kill()
            proc.wait()
    return size / seconds


# -- 2. idle hosts and introductions ----------------------------------------------------------


async def _worker(url: str, count: int, mode: str) -> None:
    """Hold ``count`` sockets (registered hosts that answer dial-backs, or bare ones), print
    one JSON line when ready, and keep them until stdin closes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keywire.link.relayconn import register_message
    from keywire.link.wire import address_for_register_key

    sockets = []
    addresses: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    semaphore = asyncio.Semaphore(200)

    async def dial_back(message: dict[str, str]) -> None:
        ws = await connect(url, compression=None)
        await ws.send(
            json.dumps({"type": "accept", "linkId": message["linkId"], "ticket": message["ticket"]})
        )
        await ws.recv()
        await ws.close()

    async def control_loop(ws) -> None:  # type: ignore[no-untyped-def]
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "relay":
                task = asyncio.create_task(dial_back(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def one() -> None:
        async with semaphore:
            if mode == "link":
                key = Ed25519PrivateKey.generate()
                from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

                address = address_for_register_key(
                    key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                )
                ws = await connect(url, compression=None, ping_interval=None)
                await ws.send(json.dumps(register_message(key, address, url)))
                assert json.loads(await ws.recv())["type"] == "registered"
                addresses.append(address)
                tasks.add(asyncio.create_task(control_loop(ws)))
            else:
                ws = await connect(url, compression=None, ping_interval=None)
            sockets.append(ws)

    await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps({"ready": len(sockets), "addresses": addresses[:200]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _spawn_worker(url: str, count: int, mode: str) -> tuple[subprocess.Popen[bytes], dict]:  # type: ignore[type-arg]
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--worker", mode, "--url", url, "--hosts", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    return proc, json.loads(line)


async def bare_server_kb_per_conn(count: int) -> float:
    """Reference: a bare websockets server process holding ``count`` idle connections."""
    code = (
        "import asyncio,sys\nfrom websockets.asyncio.server import serve\n"
        "async def h(ws):\n    await ws.wait_closed()\n"
        "async def m():\n    async with serve(h,'127.0.0.1',0,compression=None) as s:\n"
        "        print(next(iter(s.sockets)).getsockname()[1],flush=True)\n"
        "        await asyncio.Future()\nasyncio.run(m())\n"
    )
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    await asyncio.sleep(0.5)
    before = rss_kb(server.pid)
    worker, _ = await _spawn_worker(f"ws://127.0.0.1:{port}/", count, "bare")
    await asyncio.sleep(1.0)
    after = rss_kb(server.pid)
    worker.kill()
    server.kill()
    worker.wait()
    server.wait()
    return (after - before) / count


async def relay_kb_per_host(
    count: int,
) -> tuple[float, subprocess.Popen[bytes], str, list[str], subprocess.Popen[bytes]]:
    # every host comes from 127.0.0.1 here, so the per-IP shares that keep one real source from
    # starving others are lifted to the count: this measures memory per host, not admission
    share = str(count + 64)
    relay, url = start_relay(
        "--ip-rate-per-min",
        "0",
        "--max-bps",
        "0",
        "--max-sockets-per-ip",
        share,
        "--max-upgrading-per-ip",
        share,
    )
    await asyncio.sleep(0.5)
    before = rss_kb(relay.pid)
    worker, info = await _spawn_worker(url, count, "link")
    await asyncio.sleep(1.0)
    after = rss_kb(relay.pid)
    return (after - before) / count, relay, url, info["addresses"], worker


async def introductions_per_sec(url: str, addresses: list[str], total: int) -> float:
    semaphore = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        async with semaphore:
            ws = await introduce(url, addresses[i % len(addresses)], 10)
            await ws.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    return total / (time.perf_counter() - started)


async def handshakes_per_sec(url: str, total: int) -> float:
    semaphore = asyncio.Semaphore(20)

    async def one() -> None:
        async with semaphore:
            ws = await connect(url, compression=None)
            await ws.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    return total / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    size = args.size_mb * 1024 * 1024
    print(f"== throughput, {args.size_mb} MB, shaping off")
    direct = await direct_throughput(size)
    relayed = await relayed_throughput(size)
    print(f"direct WebSocket (same stack): {direct / 1e6:8.1f} MB/s")
    print(f"through the relay            : {relayed / 1e6:8.1f} MB/s")
    print(f"ratio relayed/direct         : {relayed / direct:8.2f}  (target >= 0.7)")

    print(f"== {args.hosts} idle registered hosts")
    reference = await bare_server_kb_per_conn(args.hosts)
    per_host, relay, url, addresses, worker = await relay_kb_per_host(args.hosts)
    try:
        print(f"bare websockets server       : {reference:8.1f} KB per idle connection")
        print(
            f"relay                        : {per_host:8.1f} KB per idle registered host "
            f"(target <= 20)"
        )
        print(f"ratio relay/bare             : {per_host / reference:8.2f}")
        shakes = await handshakes_per_sec(url, args.intros)
        intros = await introductions_per_sec(url, addresses, args.intros)
        print(f"plain WebSocket handshakes   : {shakes:8.0f} /s")
        print(f"introductions (to relaying)  : {intros:8.0f} /s")
        print(f"ratio introductions/handshake: {intros / shakes:8.2f}")
    finally:
        worker.kill()
        relay.kill()
        worker.wait()
        relay.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=32)
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--intros", type=int, default=500)
    parser.add_argument("--worker", choices=["link", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        asyncio.run(_worker(arguments.url, arguments.hosts, arguments.worker))
    else:
        asyncio.run(main(arguments))
