"""``keywire.dial`` of a Link address in the NAT lab: the connection starts relayed, moves its new
streams to a punched direct path when the NATs allow it, and back to the relay when that path
dies. The relay's byte counters tell which path carried a stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import keywire
from keywire.address import parse
from keywire.cli import build_parser, options_from
from keywire.identity import Identity
from keywire.link.handler import LinkHandler
from keywire.link.host import LinkHost
from keywire.link.session import LinkPipe
from keywire.mux.connection import MuxConnection
from keywire.mux.transform import config_from_options
from keywire.nat.linkconn import PathConnection
from keywire.nat.linkdirect import direct_settings
from keywire.options import Options
from keywire.stream import Connection, Stream

from ..link.conftest import RelayProcess
from ..link.helpers import EchoHost
from .lab import KEYWIRE, RELAY_IP, Lab, NsLoop

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
#: keep-alives and punch envelopes cross the relay too; a 1 MiB echo moves 2 MiB
RELAY_NOISE = 64 << 10


async def _stats() -> int:
    """Bytes the relay has forwarded in all (its /v1/stats counters)."""
    reader, writer = await asyncio.open_connection(RELAY_IP, 8080)
    try:
        writer.write(b"GET /v1/stats HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    counted = body["bytesRelayed"]
    return int(counted["fromHost"]) + int(counted["fromClient"])


async def _echo(conn: Connection, payload: bytes) -> bytes:
    stream = await conn.open_stream()
    reader = asyncio.ensure_future(stream.read_all())
    await stream.write(payload)
    await stream.close_write()
    return await asyncio.wait_for(reader, 20)


async def _wait_path(conn: PathConnection, prefix: str, timeout: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not conn.path.startswith(prefix):
            await asyncio.sleep(0.01)
    return time.monotonic() - started


@dataclass
class Setup:
    lab: Lab
    host: EchoHost
    h_loop: NsLoop
    c_loop: NsLoop
    inet: NsLoop
    address: str
    code: str
    client_store: Path
    extra: dict[str, object]

    async def dial(self) -> PathConnection:
        options = Options(
            timeout=5.0,
            extra={
                **self.extra,
                "link.pairing_code": self.code,
                "link.store_dir": str(self.client_store),
            },
        )
        conn = await LinkHandler().dial(parse(self.address).alternatives[0], options)
        assert isinstance(conn, PathConnection)
        return conn


def _setup(
    lab: Lab,
    tmp_path: Path,
    host_preset: str,
    client_preset: str,
    extra: dict[str, object],
    host_class: type[EchoHost] = EchoHost,
) -> Setup:
    url = lab.relay("--max-bps", "0", host="0.0.0.0", port=8080, stun_ports=(3478, 3479))
    h_peer = lab.add_peer("h", host_preset)
    c_peer = lab.add_peer("c", client_preset)
    h_loop, c_loop = lab.ns_loop(h_peer.ns), lab.ns_loop(c_peer.ns)
    host = host_class([url], tmp_path / "host", extra=dict(extra))
    h_loop.run(host.start())
    assert host.code is not None
    return Setup(
        lab,
        host,
        h_loop,
        c_loop,
        lab.ns_loop(lab.inet),
        host.announced,
        host.code,
        tmp_path / "client",
        extra,
    )


def _host_path(setup: Setup) -> str:
    async def path() -> str:
        conn = setup.host.connections[-1]
        assert isinstance(conn, PathConnection)
        return conn.path

    return setup.h_loop.run(path())


@pytest.mark.parametrize(
    ("host_preset", "client_preset"),
    [
        ("full-cone", "eim-apdf"),  # round 1: the client dials the host
        ("edm-pp", "eim-apdf"),  # round 2: the host dials the client's listener
        # the many-port guess, the random side dialling from the socket a probe reached
        ("eim-apdf", "edm-random"),
        ("edm-random", "eim-apdf"),
    ],
)
def test_the_path_goes_direct(
    lab: Lab, tmp_path: Path, host_preset: str, client_preset: str
) -> None:
    setup = _setup(lab, tmp_path, host_preset, client_preset, {})

    async def client() -> tuple[str, float, float, PathConnection, Stream]:
        started = time.monotonic()
        conn = await setup.dial()
        dialled = time.monotonic()
        first = conn.path
        early = await conn.open_stream()  # opened on the relay: it stays there
        await early.write(b"before ")
        await _wait_path(conn, "direct", 15)
        return first, dialled - started, time.monotonic() - started, conn, early

    first, dial_s, seconds, conn, early = setup.c_loop.run(client(), timeout=30)
    print(
        f"{host_preset} <- {client_preset}: dial {dial_s * 1000:.0f} ms, "
        f"dial to direct path {seconds * 1000:.0f} ms ({conn.path})"
    )
    assert first == "relay"  # dial returned with the relayed session, before the punch

    async def finish_early() -> bytes:
        await early.write(b"and after")
        await early.close_write()
        return await asyncio.wait_for(early.read_all(), 10)

    before = setup.inet.run(_stats())
    assert setup.c_loop.run(finish_early()) == b"before and after"  # echoed over the relay
    assert setup.inet.run(_stats()) > before
    assert conn.path.startswith("direct 198.51.100.11:")  # the host router's public address
    before = setup.inet.run(_stats())
    assert setup.c_loop.run(_echo(conn, PAYLOAD), timeout=30) == PAYLOAD
    after = setup.inet.run(_stats())
    assert after - before < RELAY_NOISE, (before, after)  # the 2 MiB went past the relay
    assert _host_path(setup).startswith("direct 198.51.100.12:")
    setup.c_loop.run(conn.close())
    setup.h_loop.run(setup.host.close())


def test_both_random_stay_relayed(lab: Lab, tmp_path: Path) -> None:
    setup = _setup(lab, tmp_path, "edm-random", "edm-random", {"link.direct_exchanges": "1"})

    async def client() -> tuple[float, PathConnection]:
        conn = await setup.dial()
        started = time.monotonic()
        async with asyncio.timeout(20):
            await conn.settled.wait()  # the one exchange is over: nothing more is tried
        return time.monotonic() - started, conn

    seconds, conn = setup.c_loop.run(client(), timeout=30)
    print(f"punch gave up after {seconds * 1000:.0f} ms")
    assert conn.path == "relay"
    before = setup.inet.run(_stats())
    assert setup.c_loop.run(_echo(conn, PAYLOAD), timeout=30) == PAYLOAD
    assert setup.inet.run(_stats()) - before >= 2 * len(PAYLOAD)  # it did cross the relay
    assert _host_path(setup) == "relay"
    setup.c_loop.run(conn.close())
    setup.h_loop.run(setup.host.close())


def test_a_cut_direct_path_sends_new_streams_over_the_relay(lab: Lab, tmp_path: Path) -> None:
    extra: dict[str, object] = {"link.direct_exchanges": "1", "link.direct_idle": "2"}
    setup = _setup(lab, tmp_path, "full-cone", "eim-apdf", extra)

    async def go_direct() -> PathConnection:
        conn = await setup.dial()
        await _wait_path(conn, "direct", 15)
        assert await _echo(conn, b"direct first") == b"direct first"
        return conn

    conn = setup.c_loop.run(go_direct(), timeout=30)
    lab.block_udp(lab.peers["c"])  # the client's router now drops every UDP packet
    seconds = setup.c_loop.run(_wait_path(conn, "relay", 10), timeout=15)
    print(f"direct path noticed dead after {seconds * 1000:.0f} ms")
    before = setup.inet.run(_stats())
    assert setup.c_loop.run(_echo(conn, PAYLOAD), timeout=30) == PAYLOAD
    assert setup.inet.run(_stats()) - before >= 2 * len(PAYLOAD)
    assert not setup.c_loop.run(_closed(conn))  # the connection itself carried on

    async def host_relay() -> None:
        host_conn = setup.host.connections[-1]
        assert isinstance(host_conn, PathConnection)
        await _wait_path(host_conn, "relay", 10)

    setup.h_loop.run(host_relay(), timeout=15)
    setup.c_loop.run(conn.close())
    setup.h_loop.run(setup.host.close())


async def _closed(conn: Connection) -> bool:
    return conn.closed


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(home)
    env["KEYWIRE_KEY"] = str(home / "keywire" / "identity.pem")
    return env


def _events(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def test_the_cli_says_which_path(lab: Lab, tmp_path: Path) -> None:
    """`keywire listen`/`dial --json` report `path` events: relay first, then direct."""
    url = lab.relay("--max-bps", "0", host="0.0.0.0", port=8080, stun_ports=(3478, 3479))
    h_peer, c_peer = lab.add_peer("h", "full-cone"), lab.add_peer("c", "eim-apdf")
    host_err = tmp_path / "listen.err"
    with host_err.open("wb") as err:
        listen = lab.popen(
            h_peer.ns,
            KEYWIRE,
            "listen",
            f"{url}~link",
            "--pairing-code",
            "ABCD-EFGH",
            "--json",
            stdout=subprocess.PIPE,
            stderr=err,
            env=_env(tmp_path / "h"),
        )
    assert listen.stdout is not None
    address = listen.stdout.readline().decode().strip()
    assert "~link:" in address, address
    subprocess.run(
        lab.exec_cmd(c_peer.ns, KEYWIRE, "pair", address, "abcdefgh"),
        env=_env(tmp_path / "c"),
        check=True,
        timeout=30,
        capture_output=True,
    )
    dial_err = tmp_path / "dial.err"
    with dial_err.open("wb") as err:
        dial = lab.popen(
            c_peer.ns,
            KEYWIRE,
            "dial",
            address,
            "--json",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=_env(tmp_path / "c"),
        )
    deadline = time.monotonic() + 20
    paths: list[object] = []
    while time.monotonic() < deadline and "direct" not in paths:
        time.sleep(0.1)
        paths = [e.get("path") for e in _events(dial_err) if e.get("event") == "path"]
    assert paths[:2] == ["relay", "direct"], _events(dial_err)
    direct = next(e for e in _events(dial_err) if e.get("path") == "direct")
    assert str(direct["remote"]).startswith("198.51.100.11:")
    out, _ = dial.communicate(b"over the direct path\n", timeout=20)
    assert out == b"over the direct path\n"  # the listener echoed it
    listen.terminate()
    listen.wait(10)
    host_paths = [e.get("path") for e in _events(host_err) if e.get("event") == "path"]
    # (the `keywire pair` session was relayed too, and ended)
    assert host_paths[0] == "relay" and "direct" in host_paths, _events(host_err)


# -- negotiation and settings, on loopback ----------------------------------------------------


@contextlib.asynccontextmanager
async def _old_host(relay_url: str, store: Path) -> AsyncIterator[tuple[str, str, list[int]]]:
    """A Link host as keywire served it before the direct path: a plain mux connection per
    session, every stream echoed. Yields (address, code, stream ids it accepted)."""
    accepted: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def on_pipe(pipe: LinkPipe) -> None:
        conn = MuxConnection(pipe, client=False, config=config_from_options(Options()))
        async for stream in conn:
            accepted.append(stream.id)
            task = asyncio.ensure_future(EchoHost._echo(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    host = LinkHost.from_identity(Identity.generate(), on_pipe, store)
    try:
        await host.add_relay(relay_url)
        code = host.open_pairing_code().code
        yield f"{relay_url}~link:{host.address}", code, accepted
    finally:
        await host.close()


async def test_an_old_host_is_not_disturbed(tmp_path: Path) -> None:
    """The client's `hello` is an envelope an old host drops unread: its application sees only
    the client's own streams, and the connection simply stays relayed."""
    relay = RelayProcess()
    try:
        async with asyncio.timeout(30), _old_host(relay.url, tmp_path / "h") as old:
            address, code, accepted = old
            conn = await LinkHandler().dial(
                parse(address).alternatives[0],
                Options(
                    timeout=5.0,
                    extra={
                        "link.pairing_code": code,
                        "link.store_dir": str(tmp_path / "c"),
                        "link.stun": "127.0.0.1:9",
                    },
                ),
            )
            assert isinstance(conn, PathConnection)
            assert await _echo(conn, PAYLOAD) == PAYLOAD
            await asyncio.sleep(0.5)
            assert len(accepted) == 1 and conn.path == "relay"
            await conn.close()
    finally:
        relay.kill()


async def test_a_host_with_direct_off_declines_and_a_client_can_turn_it_off(
    tmp_path: Path,
) -> None:
    relay = RelayProcess()
    host = EchoHost([relay.url], tmp_path / "h", extra={"link.direct": False})
    try:
        async with asyncio.timeout(30):
            await host.start()
            assert host.code is not None
            conn = await LinkHandler().dial(
                parse(host.announced).alternatives[0],
                Options(
                    timeout=5.0,
                    extra={"link.pairing_code": host.code, "link.store_dir": str(tmp_path / "c")},
                ),
            )
            assert isinstance(conn, PathConnection)
            await asyncio.wait_for(conn.settled.wait(), 5)  # the host said no at once
            assert conn.path == "relay"
            assert await _echo(conn, b"relayed") == b"relayed"
            await conn.close()
            plain = await LinkHandler().dial(
                parse(host.announced).alternatives[0],
                Options(
                    timeout=5.0,
                    extra={"link.direct": "false", "link.store_dir": str(tmp_path / "c")},
                ),
            )
            assert not isinstance(plain, PathConnection)  # no punch, no wrapper
            assert await _echo(plain, b"plain") == b"plain"
            await plain.close()
    finally:
        await host.close()
        relay.kill()


def test_direct_settings_are_checked() -> None:
    s = direct_settings({"link.direct": "off", "link.stun": "198.51.100.1:3478"})
    assert not s.enabled and s.stun == "198.51.100.1:3478"
    assert direct_settings({"link.direct_exchanges": "2"}).exchanges == 2
    assert direct_settings({}).resume and not direct_settings({"link.direct_resume": "0"}).resume
    guess = direct_settings(
        {"link.direct_guess_sockets": "128", "link.direct_guess_rate": 2000}
    ).punch.guess
    assert guess.enabled and guess.sockets == 128 and guess.rate == 2000 and guess.probes == 2048
    assert not direct_settings({"link.direct_guess": "false"}).punch.guess.enabled
    assert (
        guess.burst == 256
        and direct_settings({"link.direct_guess_burst": "0"}).punch.guess.burst == 0
    )
    cases: list[tuple[dict[str, object], str]] = [
        ({"link.direct": "maybe"}, "true or false"),
        ({"link.direct_resume": "perhaps"}, "true or false"),
        ({"link.direct_exchanges": 0}, ">= 1"),
        ({"link.direct_exchanges": "1.5"}, "whole"),
        ({"link.direct_idle": "soon"}, "number"),
        ({"link.stun": ""}, "HOST"),
        ({"link.direct_guess": "sometimes"}, "true or false"),
        ({"link.direct_guess_sockets": 0}, "link.direct_guess_sockets"),
        ({"link.direct_guess_sockets": "2.5"}, "whole"),
        ({"link.direct_guess_probes": 70000}, "link.direct_guess_probes"),
        ({"link.direct_guess_rate": 1}, "link.direct_guess_rate"),
        ({"link.direct_guess_time": "0"}, "link.direct_guess_time"),
        ({"link.direct_guess_burst": 5000}, "link.direct_guess_burst"),
        ({"link.direct_guess_burst": "1.5"}, "whole"),
    ]
    for bad, why in cases:
        with pytest.raises(ValueError, match=why):
            direct_settings(bad)


async def test_a_misspelt_direct_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown setting .link\.drect"):
        await keywire.dial("ws://127.0.0.1:9/v1/link~link:" + "A" * 43, extra={"link.drect": False})


def test_the_cli_can_turn_the_direct_path_off(tmp_path: Path) -> None:
    parser = build_parser()
    for command in (["dial", "ADDR"], ["listen", "ws://relay/v1/link~link"]):
        args = parser.parse_args([*command, "--no-direct", "--key", str(tmp_path / "k.pem")])
        assert options_from(args).extra["link.direct"] is False
        args = parser.parse_args([*command, "--key", str(tmp_path / "k.pem")])
        assert "link.direct" not in options_from(args).extra
