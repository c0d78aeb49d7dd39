"""Store-stream throughput per backend, as a ratio to that backend's raw put+get client.

For each backend and window, in one run and alternating, it times two things that move the
same ``--size`` application bytes:

* **stream**: a ``StoreStream`` pair writes ``--size`` bytes one way until the reader has EOF;
* **raw**: the same number of values the stream needs (one per frame, plus its End) of the
  same stored size, put by one client with ``window`` puts in flight and read by a second
  client with ``window`` long-poll gets in flight, through the same backend class and server,
  with no keywire stream logic (no frames, no crypto, no acks, no retransmission). On a
  store that takes signed puts the raw bodies are signed beforehand (outside the timing):
  the server's check is the server's cost, the client's signing is the stream's.

Why that is the fair reference: it is the best a client of that store can do for the same
payload with the same pipelining (window puts and window gets in flight, reader and writer on
their own connections, the reader long-polling as the stream does), so ``stream/raw`` is the
share of the store's own speed the stream delivers. What the stream adds on top is its own
work: sealing and opening every frame, signatures, the reverse direction's acks (extra puts
and gets), read-backs, scheduling.

Every server is its own process, started the way the tests start it (the map server with
``python -m keywire.store.mapserver map-server``, ``--signed`` for ``http-signed``; Redis,
Redis Cluster and NATS through tests/store's helpers). ``--rounds`` repeats each pair to show
the noise; the table prints each round's ratio and the median.

Usage: .venv/bin/python bench/bench_store.py [--quick] [--size 8000000] [--windows 1,8,32]
       [--backends http,http-signed,redis,rediscluster,nats] [--rounds 2] [--loss 0]
       [--pings 0] [--profile FILE] [--count]

``--count`` also prints, per setting, what the stream asked of the store per data frame: the
core's puts (first puts of data/End, bare acks, retransmissions) and gets by purpose (reads of
the peer's frames, read-backs, head-of-line probes), the reads that came back empty, and on
Redis the server's own command counts (``INFO commandstats``: GET, EVALSHA, (UN)SUBSCRIBE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import math
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.store.conftest import RedisProcess  # noqa: E402
from tests.store.natsproc import NatsProcess  # noqa: E402
from tests.store.redisclusterproc import RedisClusterProcesses  # noqa: E402

from keywire.store import (  # noqa: E402
    HttpStore,
    LossyStore,
    MemoryStore,
    RedisStore,
    Role,
    StoreBackend,
    StoreParams,
    StoreStream,
    generate_secret,
)
from keywire.store.backendops import BackendOps  # noqa: E402
from keywire.store.backends.nats import NatsStore  # noqa: E402
from keywire.store.backends.rediscluster import RedisClusterStore  # noqa: E402
from keywire.store.capability import WriteCap  # noqa: E402
from keywire.store.frame import Geometry  # noqa: E402
from keywire.store.ops import GetOp, Op, PutOp  # noqa: E402

BACKENDS = ("memory", "http", "http-signed", "redis", "rediscluster", "nats")
BIG = 1 << 20


@asynccontextmanager
async def map_server(signed: bool) -> AsyncIterator[str]:
    """``keywire map-server`` in its own process; yields its URL."""
    args = [sys.executable, "-m", "keywire.store.mapserver", "map-server", "--port", "0"]
    args += ["--max-value", str(BIG), "--max-bytes", str(1 << 31), "--ttl", "120"]
    args += ["--max-connections-per-ip", "4096", "--max-waiters", "65536"]
    if signed:
        args.append("--signed")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            url = (await proc.stdout.readline()).decode().strip()
        if not url.startswith("http"):
            raise SystemExit(f"map server did not start (said {url!r})")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@asynccontextmanager
async def clients(name: str, folder: Path) -> AsyncIterator[Callable[[], StoreBackend]]:
    """A server of kind ``name`` for the duration; yields a factory of its clients."""
    if name == "memory":
        store = MemoryStore()
        yield lambda: store
    elif name in ("http", "http-signed"):
        signed = name == "http-signed"
        async with map_server(signed) as url:
            yield lambda: HttpStore(url, max_value=BIG, signed=signed)
    elif name == "redis":
        redis = RedisProcess(folder, persistent=False)
        redis.start()
        try:
            yield lambda: RedisStore(redis.url, max_value=BIG, ttl=120)
        finally:
            redis.stop()
    elif name == "rediscluster":
        cluster = RedisClusterProcesses(folder)
        try:
            cluster.start()
            yield lambda: RedisClusterStore(cluster.url, max_value=BIG, ttl=120)
        finally:
            cluster.stop()
    elif name == "nats":
        if shutil.which("nats-server") is None:
            raise SystemExit("nats-server is not installed (bash scripts/install.sh --test)")
        nats = NatsProcess(folder)
        nats.start()
        try:
            bucket = f"{nats.url}/bench"
            yield lambda: NatsStore(bucket, max_value=BIG, ttl=120)
        finally:
            nats.stop()
    else:
        raise SystemExit(f"unknown backend {name!r}: {', '.join(BACKENDS)}")


class Counts:
    """What the streams' cores asked of the store, by kind (``--count``)."""

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}

    def add(self, kind: str, n: int = 1) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + n

    def install(self) -> Callable[[], None]:
        """Count every operation ``BackendOps`` starts and every get that comes back empty;
        returns the function that undoes it."""
        start, get = BackendOps.start, BackendOps._get
        counts = self

        def counted_start(self: BackendOps, ops: list[Op]) -> None:
            for op in ops:
                if isinstance(op, PutOp):
                    sent = self.core.sender.sent.get(op.index)
                    if sent is not None and sent.transmissions:
                        counts.add("put: again")
                    elif sent is not None and not sent.needs_ack:
                        counts.add("put: bare ack")
                    else:
                        counts.add("put: frame")
                else:
                    counts.add(f"get: {op.purpose.value}")
            start(self, ops)

        async def counted_get(self: BackendOps, op: GetOp) -> bytes | None:
            value = await get(self, op)
            if value is None:
                counts.add(f"get: {op.purpose.value} empty")
            return value

        BackendOps.start = counted_start  # type: ignore[method-assign]
        BackendOps._get = counted_get  # type: ignore[method-assign]

        def undo() -> None:
            BackendOps.start, BackendOps._get = start, get  # type: ignore[method-assign]

        return undo


async def redis_commands(store: StoreBackend) -> dict[str, int] | None:
    """Calls per command from ``INFO commandstats`` (a single Redis; else None)."""
    if not isinstance(store, RedisStore):
        return None
    info = await store._client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def per_frame(counts: dict[str, int], frames: int) -> str:
    return ", ".join(f"{k} {v / frames:.2f}" for k, v in sorted(counts.items()) if v)


@asynccontextmanager
async def pair(make: Callable[[], StoreBackend]) -> AsyncIterator[tuple[StoreBackend, ...]]:
    """Two clients (each end has its own connection), closed afterwards."""
    a, b = make(), make()
    try:
        await a.probe()
        yield a, b
    finally:
        await a.close()
        if b is not a:
            await b.close()


def frames_for(size: int, value_size: int) -> int:
    """Values the stream puts for ``size`` bytes: full frames, then the End."""
    return math.ceil(size / Geometry(value_size).payload_capacity) + 1


async def raw_run(
    a: StoreBackend, b: StoreBackend, count: int, value_size: int, window: int
) -> float:
    """Seconds to put ``count`` values through ``a`` and get them all through ``b``, each
    side with ``window`` operations in flight (see the module text)."""
    cap = WriteCap.derive(generate_secret(), Role.LISTENER) if a.signed else None
    value = os.urandom(value_size)
    items: list[tuple[bytes, bytes]] = []
    for i in range(count):
        if cap is not None:
            items.append(cap.signed_put(i, value))
        else:
            items.append((os.urandom(32), value))
    expected = len(items[0][1])
    puts, gets = iter(items), iter(items)

    async def putter() -> None:
        for address, body in puts:
            await a.put(address, body)

    async def getter() -> None:
        for address, _ in gets:
            got = await b.get(address, 20.0)
            if got is None or len(got) != expected:
                raise SystemExit("raw get returned nothing or a wrong value")

    start = time.perf_counter()
    await asyncio.gather(*(putter() for _ in range(window)), *(getter() for _ in range(window)))
    return time.perf_counter() - start


async def stream_run(
    a_store: StoreBackend, b_store: StoreBackend, params: StoreParams, size: int, pings: int
) -> tuple[float, float | None]:
    """(seconds for ``size`` bytes one way, median one-way latency of a small write)."""
    secret = generate_secret()
    a = StoreStream.open(a_store, secret, Role.LISTENER, params=params)
    b = StoreStream.open(b_store, secret, Role.DIALER, params=params)
    try:
        rtts = []
        for _ in range(pings):
            start = time.perf_counter()
            await a.write(b"p" * 64)
            await b.readexactly(64)
            await b.write(b"q" * 64)
            await a.readexactly(64)
            rtts.append(time.perf_counter() - start)
        data = os.urandom(size)

        async def send() -> None:
            await a.write(data)
            await a.close_write()

        start = time.perf_counter()
        _, got = await asyncio.gather(send(), b.read_all())
        elapsed = time.perf_counter() - start
        if got != data:
            raise SystemExit("stream delivered other bytes")
        return elapsed, (statistics.median(rtts) / 2 if rtts else None)
    finally:
        await a.abort()
        await b.abort()


async def main(args: argparse.Namespace) -> None:
    windows = [int(w) for w in args.windows.split(",")]
    count = frames_for(args.size, args.value_size)
    print(
        f"store throughput ÷ raw put+get: {args.size} bytes one way ({count} values of "
        f"{args.value_size} bytes), {args.rounds} round(s), loss {args.loss:.0%}, "
        f"rto_min {args.rto_min} s"
    )
    header = (
        f"{'backend':13} {'window':>6} {'stream MB/s':>11} {'raw MB/s':>9} "
        f"{'stream/raw':>10}  {'rounds':<18} {'lat ms':>7} {'stream ms':>9} {'raw ms':>9}"
    )
    # the last two columns: this process's CPU per MB (both ends of the stream, or both raw
    # clients, run in it; the servers are other processes)
    print(header)
    print("-" * len(header))
    profiler = cProfile.Profile() if args.profile else None
    for name in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            async with clients(name, Path(tmp)) as make, pair(make) as (store_a, store_b):
                for window in windows:
                    params = StoreParams(
                        window=window,
                        value_size=args.value_size,
                        rto_min=args.rto_min,
                        rto_initial=max(args.rto_min, 0.2),
                        seed=1,
                    )
                    a, b = store_a, store_b
                    if args.loss:
                        a = LossyStore(store_a, put_loss=args.loss, seed=window)
                        b = LossyStore(store_b, put_loss=args.loss, seed=window + 1)
                    ratios, stream_t, raw_t, lats = [], [], [], []
                    stream_cpu, raw_cpu = [], []
                    counts, server, raw_server = Counts(), Counts(), Counts()
                    for _ in range(args.rounds):
                        before = await redis_commands(store_a) if args.count else None
                        cpu = time.process_time()
                        raw = await raw_run(store_a, store_b, count, args.value_size, window)
                        raw_cpu.append(time.process_time() - cpu)
                        after = await redis_commands(store_a) if args.count else None
                        if before is not None and after is not None:
                            for command, calls in after.items():
                                if command != "info":
                                    raw_server.add(command, calls - before.get(command, 0))
                        if profiler is not None:
                            profiler.enable()
                        undo = counts.install() if args.count else None
                        before = await redis_commands(store_a) if args.count else None
                        cpu = time.process_time()
                        try:
                            took, lat = await stream_run(a, b, params, args.size, args.pings)
                            stream_cpu.append(time.process_time() - cpu)
                        finally:
                            if undo is not None:
                                undo()
                        after = await redis_commands(store_a) if args.count else None
                        if before is not None and after is not None:
                            for command, calls in after.items():
                                if command != "info":
                                    server.add(command, calls - before.get(command, 0))
                        if profiler is not None:
                            profiler.disable()
                        raw_t.append(raw)
                        stream_t.append(took)
                        ratios.append(raw / took)
                        if lat is not None:
                            lats.append(lat)
                    mb = args.size / 1e6
                    shown = " ".join(f"{r:.2f}" for r in ratios)
                    lat_text = f"{statistics.median(lats) * 1e3:7.2f}" if lats else f"{'-':>7}"
                    print(
                        f"{name:13} {window:6d} {mb / statistics.median(stream_t):11.2f} "
                        f"{mb / statistics.median(raw_t):9.2f} "
                        f"{statistics.median(ratios):10.2f}  {shown:<18} {lat_text} "
                        f"{statistics.median(stream_cpu) / mb * 1e3:9.1f} "
                        f"{statistics.median(raw_cpu) / mb * 1e3:9.1f}",
                        flush=True,
                    )
                    if args.count:
                        frames = (count - 1) * args.rounds  # data frames
                        print(f"    per data frame: {per_frame(counts.kinds, frames)}")
                        if server.kinds:
                            print(f"    redis per data frame: {per_frame(server.kinds, frames)}")
                            raw_kinds = per_frame(raw_server.kinds, frames)
                            print(f"    raw: redis per value: {raw_kinds}")
    if profiler is not None:
        profiler.dump_stats(args.profile)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8_000_000, help="bytes per transfer")
    parser.add_argument(
        "--quick", action="store_true", help="2 MB, one round (a smoke run in seconds)"
    )
    parser.add_argument("--value-size", type=int, default=16384, help="store value size")
    parser.add_argument("--windows", default="1,8,32")
    parser.add_argument(
        "--backends",
        default="http,http-signed,redis,rediscluster,nats",
        help=f"comma list of: {', '.join(BACKENDS)}",
    )
    parser.add_argument("--rounds", type=int, default=2, help="raw/stream pairs per setting")
    parser.add_argument("--loss", type=float, default=0.0, help="share of puts the stream loses")
    parser.add_argument(
        "--losses", default=None, help=argparse.SUPPRESS
    )  # the older option (bench/before_after.py passes it): its first value is --loss
    parser.add_argument("--pings", type=int, default=0, help="ping-pongs timed per stream")
    parser.add_argument(
        "--rto-min",
        type=float,
        default=0.05,
        help="minimum retransmission timeout (the library default is 0.2)",
    )
    parser.add_argument("--profile", default=None, help="cProfile the streams into this file")
    parser.add_argument(
        "--count", action="store_true", help="print the stream's store requests per data frame"
    )
    parsed = parser.parse_args()
    if parsed.losses:
        parsed.loss = float(parsed.losses.split(",")[0])
    if parsed.quick:
        parsed.size, parsed.rounds = 2_000_000, 1
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parsed))
