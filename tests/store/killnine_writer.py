"""A store-stream writer run as its own process by test_killnine.py.

It writes deterministic bytes to a map server, saving its sealed state to a file every 50 ms
(atomically), so the test can ``kill -9`` it at any moment and start it again from the file.
Usage: killnine_writer.py URL SECRET STATE_FILE KEY_HEX TOTAL SEED
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from pathlib import Path

from keywire.store import HttpStore, Role, StoreParams, StoreStream, parse_secret


def save(stream: StoreStream, path: Path, key: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(stream.save(key))
    os.replace(tmp, path)


async def main(url: str, secret_text: str, state: Path, key: bytes, total: int, seed: int) -> int:
    data = random.Random(seed).randbytes(total)
    store = HttpStore(url)
    params = StoreParams(window=8, value_size=4096, rto_min=0.05, rto_initial=0.2)
    if state.exists():
        stream = await StoreStream.restore(store, state.read_bytes(), key, params=params)
        print(f"resumed at {stream.bytes_written}", flush=True)
    else:
        stream = StoreStream.open(store, parse_secret(secret_text), Role.DIALER, params=params)
        save(stream, state, key)
        print("started", flush=True)
    loop = asyncio.get_running_loop()
    last = loop.time()
    while stream.bytes_written < total:
        offset = stream.bytes_written
        await stream.write(data[offset : offset + 16384])
        await asyncio.sleep(0.002)  # slow enough to be killed mid-transfer
        if loop.time() - last > 0.05:
            save(stream, state, key)
            last = loop.time()
    await stream.close_write()
    await stream.sync(acked=True)
    save(stream, state, key)
    print("done", flush=True)
    await stream.abort()
    await store.close()
    return 0


if __name__ == "__main__":
    url, secret, state_file, key_hex, total, seed = sys.argv[1:7]
    sys.exit(
        asyncio.run(
            main(url, secret, Path(state_file), bytes.fromhex(key_hex), int(total), int(seed))
        )
    )
