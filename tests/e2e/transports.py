"""The transports of the CLI matrix: how to start a listener for each, and its time budget.

Servers (relay, map server, redis) come from module-scoped fixtures, fetched lazily so a run
of one transport starts only what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import LinkWorld, ServerProcess
from .helpers import MB, side_env

#: transport id (``~`` written ``_``, so ``pytest -k net_shs_mux`` works) → minimum rate
#: (bytes/s) the time bound allows it
TRANSPORTS: dict[str, float] = {
    "kps": 4 * MB,
    "webtransport": 4 * MB,
    "net_shs": 4 * MB,
    "net_shs_mux": 4 * MB,
    "ws_shs_mux": 4 * MB,
    "ws_noauth": 4 * MB,
    "unix_shs": 4 * MB,
    "link": 4 * MB,
    "store_http": 1.5 * MB,
    "store_http_signed": 1 * MB,
    "store_redis": 1.5 * MB,
    "store_redis_module": 1 * MB,
}
#: startup of both processes, handshake, pairing-free reconnect through a relay
BASE_SECONDS = 30.0


@dataclass
class Setup:
    """Arguments and environments of one listener/dialer pair."""

    listen_args: list[str]
    dial_args: list[str]
    listener_env: dict[str, str]
    dialer_env: dict[str, str]
    rate: float

    def bound(self, total_bytes: int) -> float:
        return BASE_SECONDS + total_bytes / self.rate


def setup_for(name: str, request: pytest.FixtureRequest, case_dir: Path) -> Setup:
    """A fresh identity per side in ``case_dir`` (Link: the module's paired host and client)."""
    rate = TRANSPORTS[name]
    lhome, dhome = case_dir / "listener-home", case_dir / "dialer-home"
    lkey, dkey = ["--key", str(lhome / "id.pem")], ["--key", str(dhome / "id.pem")]
    lenv, denv = side_env(lhome), side_env(dhome)
    specs: list[str]
    if name in ("kps", "webtransport"):
        specs = [f"{name}:127.0.0.1:0"]
    elif name.startswith("net_"):
        specs = ["net:127.0.0.1:0~" + name.removeprefix("net_").replace("_", "~")]
    elif name.startswith("ws_"):
        specs = ["ws://127.0.0.1:0~" + name.removeprefix("ws_").replace("_", "~")]
    elif name == "unix_shs":
        short: Path = request.getfixturevalue("short_dir")
        sock = short / f"{case_dir.name[-40:]}.sock"
        specs = [f"unix:{sock}~shs"]
    elif name == "link":
        world: LinkWorld = request.getfixturevalue("link_world")
        specs = [f"{world.relay.url}~link"]
        lkey = ["--key", str(world.host_key)]
        lenv, denv = world.host_env(), world.client_env()
    elif name == "store_http":
        server: ServerProcess = request.getfixturevalue("map_server")
        specs = [f"{server.url}~stream"]
    elif name == "store_http_signed":
        signed: ServerProcess = request.getfixturevalue("signed_map_server")
        specs = [f"{signed.url}~stream"]
    elif name == "store_redis":
        url: str = request.getfixturevalue("redis_url")
        specs = [f"{url}~stream"]
    elif name == "store_redis_module":
        signed_url: str = request.getfixturevalue("redis_module_url")
        specs = [f"{signed_url}~stream"]
    else:
        raise ValueError(name)
    return Setup([*specs, *lkey], dkey, lenv, denv, rate)
