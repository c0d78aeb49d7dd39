"""shs + box-stream throughput and handshake latency, as ratios to references in the same run.

    .venv/bin/python bench/bench_shs.py [--size-mb 256] [--connects 200] [--no-node]

One-way bulk transfer from this process to a receiver in a child process (so sender and
receiver each get a core): raw TCP (asyncio streams), keywire ``net~shs`` and ``ws~shs``, and
the Node pair (multiserver net~shs = secret-handshake + pull-box-stream, a Node sender and a
Node receiver). Each figure is first byte sent → the receiver's 2-byte "ok" after the last.
Then handshake latency (connect + shs) over ``--connects`` sequential dials of ``net~shs``,
against plain TCP connects to the same kind of server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NPM_DIR = ROOT / "tests" / "interop" / "npm"
APP_KEY = os.urandom(32)
BLOCK = os.urandom(1 << 18)


# -- receivers (child processes) ---------------------------------------------------------------


async def serve_raw() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = struct.unpack(">Q", await reader.readexactly(8))[0]
            left = size
            while left > 0:
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    return
                left -= len(chunk)
            writer.write(b"ok")
            await writer.drain()
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(
        json.dumps({"address": f"tcp:127.0.0.1:{server.sockets[0].getsockname()[1]}"}), flush=True
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def serve_keywire(spec: str, app_key: bytes) -> None:
    import keywire
    from keywire.options import Options
    from keywire.registry import registry
    from keywire.shs.transform import register

    if "shs" not in registry.transforms:
        register(registry)

    async def handle(conn: keywire.Connection) -> None:
        stream = await conn.accept_stream()
        try:
            size = struct.unpack(">Q", await stream.readexactly(8))[0]
        except (asyncio.IncompleteReadError, keywire.StreamError):
            return
        left = size
        while left > 0:
            chunk = await stream.read(1 << 20)
            if not chunk:
                return
            left -= len(chunk)
        await stream.write(b"ok")
        while await stream.read():
            pass
        await stream.close_write()

    options = Options(identity=keywire.Identity.generate(), app_key=app_key)
    async with keywire.Server(spec, options, handler=handle) as server:
        print(json.dumps({"address": server.address()}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# -- senders -------------------------------------------------------------------------------------


class Child:
    """A receiver process and the address it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, address: str) -> None:
        self.proc = proc
        self.address = address

    @classmethod
    async def start(
        cls, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=cwd
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        return cls(proc, json.loads(line)["address"])

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def chunks(size: int) -> list[memoryview]:
    view = memoryview(BLOCK)
    out = []
    while size > 0:
        n = min(size, len(view))
        out.append(view[:n])
        size -= n
    return out


async def send_raw(address: str, size: int) -> float:
    host, port = address.split(":")[1:]
    reader, writer = await asyncio.open_connection(host, int(port))
    start = time.perf_counter()
    writer.write(struct.pack(">Q", size))
    for piece in chunks(size):
        writer.write(piece)
        await writer.drain()
    assert await reader.readexactly(2) == b"ok"
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed


async def send_keywire(address: str, size: int) -> float:
    import keywire

    conn = await keywire.dial(address, identity=keywire.Identity.generate(), app_key=APP_KEY)
    try:
        stream = await conn.open_stream()
        start = time.perf_counter()
        await stream.write(struct.pack(">Q", size))
        for piece in chunks(size):
            await stream.write(piece)  # type: ignore[arg-type]
        assert await stream.readexactly(2) == b"ok"
        elapsed = time.perf_counter() - start
        await stream.close_write()
        return elapsed
    finally:
        await conn.close()


async def node_pair(size: int) -> float:
    node = shutil.which("node")
    if node is None or not (NPM_DIR / "node_modules" / "multiserver").is_dir():
        raise SystemExit(
            "the Node reference needs node and `npm ci --prefix tests/interop/npm`"
            " (or pass --no-node)"
        )
    import base64

    env = dict(os.environ, KW_APP_KEY=base64.b64encode(APP_KEY).decode())
    receiver = await Child.start(node, "bench_pair.js", "receive", str(size), env=env, cwd=NPM_DIR)
    try:
        proc = await asyncio.create_subprocess_exec(
            node,
            "bench_pair.js",
            "send",
            receiver.address,
            str(size),
            env=env,
            cwd=NPM_DIR,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 600)
        return float(json.loads(out.decode().splitlines()[0])["seconds"])
    finally:
        await receiver.stop()


async def keywire_child(spec: str) -> Child:
    return await Child.start(sys.executable, __file__, "--serve", spec, "--app-key", APP_KEY.hex())


async def latency(address: str, count: int, raw: bool) -> list[float]:
    import keywire

    me = keywire.Identity.generate()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        if raw:
            host, port = address.split(":")[1:]
            _, writer = await asyncio.open_connection(host, int(port))
            times.append(time.perf_counter() - start)
            writer.close()
        else:
            conn = await keywire.dial(address, identity=me, app_key=APP_KEY)
            times.append(time.perf_counter() - start)
            await conn.close()
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    from keywire.registry import registry
    from keywire.shs.transform import register

    if "shs" not in registry.transforms:
        register(registry)
    size = args.size_mb * 1024 * 1024
    rates: dict[str, float] = {}

    raw = await Child.start(sys.executable, __file__, "--serve", "raw")
    try:
        rates["raw TCP"] = size / await send_raw(raw.address, size)
        raw_connect = await latency(raw.address, args.connects, raw=True)
    finally:
        await raw.stop()
    for spec, label in (
        ("net:127.0.0.1:0~shs", "keywire net~shs"),
        ("ws://127.0.0.1:0~shs", "keywire ws~shs"),
    ):
        child = await keywire_child(spec)
        try:
            rates[label] = size / await send_keywire(child.address, size)
            if spec.startswith("net"):
                shs_connect = await latency(child.address, args.connects, raw=False)
        finally:
            await child.stop()
    if not args.no_node:
        rates["Node secret-handshake pair"] = size / await node_pair(size)

    print(
        f"one-way transfer of {args.size_mb} MB (MB/s, ratio to raw TCP"
        + ("" if args.no_node else ", ratio to the Node pair")
        + ")"
    )
    node_rate = rates.get("Node secret-handshake pair")
    for label, rate in rates.items():
        line = f"  {label:28s} {rate / 1e6:8.1f} MB/s  {rate / rates['raw TCP']:6.3f}x raw"
        if node_rate:
            line += f"  {rate / node_rate:6.2f}x Node"
        print(line)
    print(f"connect latency over {args.connects} sequential connects (ms)")
    for label, values in (("raw TCP connect", raw_connect), ("keywire net~shs", shs_connect)):
        print(
            f"  {label:28s} p50 {pct(values, 0.5) * 1e3:7.3f}  p99 {pct(values, 0.99) * 1e3:7.3f}"
            f"  mean {statistics.fmean(values) * 1e3:7.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--no-node", action="store_true", help="skip the Node reference")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--app-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "raw":
        asyncio.run(serve_raw())
    elif args.serve:
        asyncio.run(serve_keywire(args.serve, bytes.fromhex(args.app_key)))
    else:
        asyncio.run(main(args))
