"""What keywire's Redis module costs: server time per signed put, and stream throughput.

One redis-server with the module loaded (built by ``keywire.store.redismodule``). Measured
in the same run, on the same server:

* **put cost**: ``--puts`` signed puts of each value size (pre-signed, so only the server
  work is timed) through ``KEYWIRE.PUT`` (verify + ``SET NX PX`` + publish) and through the
  write-once Lua script (``SET NX PX`` + publish, no verify): the server's own time per call
  (``INFO commandstats``, ``usec_per_call``) and the client's puts per second (32 at once);
  ``--runs`` times, showing the least time and the best rate (the rest is other load);
* **stream throughput**: ``--size`` bytes one way, signed, window 16, value 16384, with
  ``server_check="module"`` and ``server_check="script"``, alternated ``--runs`` times.

Usage: .venv/bin/python bench/bench_redis_module.py [--puts 2000] [--size 4194304] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
from tests.store.conftest import RedisProcess  # noqa: E402

from keywire.store import RedisStore, Role, StoreParams, StoreStream  # noqa: E402
from keywire.store.backends.redis_writeonce import (  # noqa: E402
    MODULE_COMMAND,
    WRITE_ONCE_SCRIPT,
    put_once,
)
from keywire.store.capability import WriteCap  # noqa: E402
from keywire.store.redismodule import build  # noqa: E402
from keywire.store.secret import generate_secret  # noqa: E402

CONCURRENCY = 32


async def put_cost(url: str, puts: int, size: int) -> dict[str, tuple[float, float]]:
    """{"module"|"script": (server µs per put, client puts per second)}."""
    cap = WriteCap.derive(generate_secret(), Role.LISTENER)
    bodies = [cap.signed_put(i, bytes(size)) for i in range(2 * puts)]
    client = aioredis.Redis.from_url(url, max_connections=CONCURRENCY * 2)
    script = client.register_script(WRITE_ONCE_SCRIPT)
    results: dict[str, tuple[float, float]] = {}
    try:
        for name, batch in (("module", bodies[:puts]), ("script", bodies[puts:])):
            await client.flushall()
            await put_once(script, b"kw:v:warm", b"x", 1, 10, b"w")  # load the script
            await client.config_resetstat()
            queue = iter(batch)

            async def worker(module: bool, queue: Iterator[tuple[bytes, bytes]]) -> None:
                for address, body in queue:
                    key = b"kw:v:" + address.hex().encode()
                    if module:
                        await client.execute_command(
                            MODULE_COMMAND, key, body, 60_000, 1 << 20, "PUBLISH", b"kw:w:x"
                        )
                    else:
                        await put_once(script, key, body, 60, 1 << 20, b"kw:w:x")

            started = time.perf_counter()
            await asyncio.gather(*(worker(name == "module", queue) for _ in range(CONCURRENCY)))
            elapsed = time.perf_counter() - started
            stats = await client.info("commandstats")
            command = "cmdstat_keywire.put" if name == "module" else "cmdstat_evalsha"
            results[name] = (float(stats[command]["usec_per_call"]), puts / elapsed)
    finally:
        await client.aclose()
    return results


async def stream_once(url: str, size: int, check: str) -> float:
    """MiB/s of ``size`` bytes one way over fresh stores with ``server_check=check``."""
    stores = [RedisStore(url, ttl=60, signed=True, server_check=check) for _ in range(2)]
    params = StoreParams(window=16, value_size=16384, rto_min=0.05, rto_initial=0.2)
    secret = generate_secret()
    a = StoreStream.open(stores[0], secret, Role.LISTENER, params=params)
    b = StoreStream.open(stores[1], secret, Role.DIALER, params=params)
    data = bytes(size)
    try:
        started = time.perf_counter()
        async with asyncio.timeout(120):
            reading = asyncio.ensure_future(b.read_all())
            await a.write(data)
            await a.close()
            got = await reading
        elapsed = time.perf_counter() - started
        assert got == data
        assert stores[0].module is (check == "module")
        return size / elapsed / (1 << 20)
    finally:
        await a.abort()
        await b.abort()
        await asyncio.gather(*(s.close() for s in stores))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4 << 20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        module = build(Path(folder) / "module")
        server = RedisProcess(Path(folder), persistent=False, modules=(module,))
        server.start()
        try:
            print(f"put cost, {args.puts} puts per row, {CONCURRENCY} at once")
            print(f"{'value':>7} {'module µs':>10} {'script µs':>10} {'verify µs':>10}"
                  f" {'module put/s':>13} {'script put/s':>13}")  # fmt: skip
            for size in (1024, 16384, 65536):
                costs = [await put_cost(server.url, args.puts, size) for _ in range(args.runs)]
                # the least time is the cost; more is other work on the machine
                m_us, s_us = (min(c[k][0] for c in costs) for k in ("module", "script"))
                m_rate, s_rate = (max(c[k][1] for c in costs) for k in ("module", "script"))
                print(f"{size:>7} {m_us:>10.1f} {s_us:>10.1f} {m_us - s_us:>10.1f}"
                      f" {m_rate:>13.0f} {s_rate:>13.0f}")  # fmt: skip
            rates: dict[str, list[float]] = {"module": [], "script": []}
            for _ in range(args.runs):
                for check in ("module", "script"):
                    await server_flush(server.url)
                    rates[check].append(await stream_once(server.url, args.size, check))
            print(f"\nstream, {args.size >> 20} MiB one way, signed, window 16, value 16384")
            for check, values in rates.items():
                shown = ", ".join(f"{v:.1f}" for v in values)
                print(f"  {check:>6}: {statistics.median(values):.1f} MiB/s (runs: {shown})")
            ratio = statistics.median(rates["module"]) / statistics.median(rates["script"])
            print(f"  module / script: {ratio:.2f}")
        finally:
            server.stop()


async def server_flush(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
