"""A store-stream reader run as its own process by test_killnine.py.

It appends what it reads to OUTPUT and saves its sealed state every 50 ms; the state's
``bytes_read`` is the length of OUTPUT at that moment, so after ``kill -9`` the restart cuts
OUTPUT back to it and continues: every byte lands once, in order.
Usage: killnine_reader.py URL SECRET STATE_FILE KEY_HEX OUTPUT
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from keywire.store import HttpStore, Role, StoreParams, StoreStream, parse_secret


async def main(url: str, secret_text: str, state: Path, key: bytes, output: Path) -> int:
    store = HttpStore(url)
    params = StoreParams(window=8, value_size=4096, rto_min=0.05, rto_initial=0.2)
    if state.exists():
        stream = await StoreStream.restore(store, state.read_bytes(), key, params=params)
        with output.open("r+b") as f:
            f.truncate(stream.bytes_read)
        print(f"resumed at {stream.bytes_read}", flush=True)
    else:
        stream = StoreStream.open(store, parse_secret(secret_text), Role.LISTENER, params=params)
        output.write_bytes(b"")
        print("started", flush=True)
    loop = asyncio.get_running_loop()
    last = loop.time()
    with output.open("ab") as out:
        while chunk := await stream.read(8192):
            out.write(chunk)
            await asyncio.sleep(0.002)  # slow enough to be killed mid-transfer
            if loop.time() - last > 0.05:
                out.flush()
                os.fsync(out.fileno())
                tmp = state.with_suffix(".tmp")
                tmp.write_bytes(stream.save(key))
                os.replace(tmp, state)
                last = loop.time()
    await stream.close_write()
    await stream.sync(acked=True)
    print("done", flush=True)
    await stream.abort()
    await store.close()
    return 0


if __name__ == "__main__":
    url, secret, state_file, key_hex, output = sys.argv[1:6]
    sys.exit(asyncio.run(main(url, secret, Path(state_file), bytes.fromhex(key_hex), Path(output))))
