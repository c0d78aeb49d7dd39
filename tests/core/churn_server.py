"""A keywire server in its own process, so a test can count what the dialing side alone holds.

Run as ``python -m tests.core.churn_server``: serves every churn server kind twice (an echo
handler, and one that closes each connection at its first bytes), prints one JSON line
``{"echo": {kind: address}, "close_early": {kind: address}}``, and exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile

import keywire
from keywire.identity import Identity

from .churn_util import close_early, echo

#: what a vanished client is found by (the client's own KPS idle timeout is negotiated down)
SERVER_OPTIONS = {
    "handshake_timeout": 0.5,
    "extra": {"kps.idle_timeout": 1.0, "kps.handshake_timeout": 0.5},
}


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        specs = {
            "kps": "kps:127.0.0.1:0",
            "net-shs-mux": "net:127.0.0.1:0~shs~mux",
            "ws-shs-mux": "ws://127.0.0.1:0~shs~mux",
            "net-noauth": "net:127.0.0.1:0~noauth",
            "unix-noauth": f"unix:{tmp}/KIND.sock~noauth",
        }
        identity = Identity.generate()
        servers: list[keywire.Server] = []
        out: dict[str, dict[str, str]] = {}
        for name, handler in (("echo", echo), ("close_early", close_early)):
            out[name] = {}
            for kind, spec in specs.items():
                server = keywire.Server(
                    [spec.replace("KIND", name)],
                    identity=identity,
                    handler=handler,
                    **SERVER_OPTIONS,
                )  # type: ignore[arg-type]
                await server.start()
                servers.append(server)
                out[name][kind] = server.address()
        print(json.dumps(out), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        for server in servers:
            await server.close(grace=1.0)


if __name__ == "__main__":
    asyncio.run(main())
