"""Link through keywire's public API (``Server``, ``dial``) and the CLI subcommands."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import keywire
from keywire.identity import Identity
from keywire.link.handler import LinkHandler
from keywire.link.store import ClientStore, HostStore
from keywire.options import Options
from keywire.registry import registry
from keywire.stream import Connection

from .conftest import RelayProcess
from .helpers import parse_link_cli

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def link_registered() -> None:
    registry.load()
    if not any(isinstance(h, LinkHandler) for h in registry.handlers):
        registry.add_handler(LinkHandler())


async def echo(conn: Connection) -> None:
    async for stream in conn:
        data = await stream.read_all()
        await stream.write(data)
        await stream.close_write()


async def test_server_and_dial_over_two_relays(relay_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r1, r2 = relay_factory(), relay_factory()
    shown: list[tuple[str, str]] = []
    options = Options(
        identity=Identity.generate(),
        extra={
            "link.store_dir": str(tmp_path / "host"),
            "link.pairing_code": True,
            "link.on_pairing_code": lambda addr, code, cid: shown.append((addr, code)),
        },
    )
    server = keywire.Server([f"{r1.url}~link", f"{r2.url}~link"], options)
    await server.start()
    task = asyncio.create_task(server.serve(echo))
    try:
        address = server.address("public")
        assert address.count("~link:") == 2 and address.startswith(r1.url)
        for _ in range(50):
            if shown:
                break
            await asyncio.sleep(0.05)
        announced, code = shown[0]
        assert announced == address
        conn, stream = await keywire.open_stream(address, extra={"link.pairing_code": code})
        await stream.write(b"through keywire.dial")
        await stream.close_write()
        assert await stream.read_all() == b"through keywire.dial"
        await conn.close()
        r1.kill()
        conn, stream = await keywire.open_stream(address)  # credential; fails over to r2
        await stream.write(b"failover")
        await stream.close_write()
        assert await stream.read_all() == b"failover"
        assert str(conn.address).startswith(r2.url)
        await conn.close()
    finally:
        await server.close()
        task.cancel()


async def test_cli_pair_list_and_revoke(
    relay: RelayProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .helpers import EchoHost

    host = await EchoHost([relay.url], tmp_path / "cfg" / "keywire").start()
    try:
        assert host.code is not None
        args = parse_link_cli(["pair", host.announced, host.code.lower()])
        assert await args.func(args) == 0
        credential = ClientStore().get(host.host.address)
        assert credential is not None
        # the host's store lives in this test's config dir too, so the CLI sees its devices
        import os

        os.environ["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
        args = parse_link_cli(["credentials", "list"])
        assert await args.func(args) == 0
        out = capsys.readouterr().out
        assert "device" in out
        key_id = out.split("keyId=")[-1].split()[0]
        # a base64url keyId may start with "-": "--" keeps argparse from reading it as a flag
        args = parse_link_cli(["credentials", "revoke", "--", key_id])
        assert await args.func(args) == 0
        assert HostStore(host.host.address, tmp_path / "cfg" / "keywire").devices() == {}
        args = parse_link_cli(["credentials", "revoke", "--", key_id])
        assert await args.func(args) == 1
    finally:
        await host.close()


async def test_cli_pair_wrong_code_is_a_clear_failure(
    relay: RelayProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .helpers import EchoHost

    host = await EchoHost([relay.url], tmp_path / "host").start("ZZZZ-ZZZZ")
    try:
        args = parse_link_cli(["pair", host.announced, "ZZZZ-ZZZ0"])
        assert await args.func(args) == 1
        assert "wrong code" in capsys.readouterr().err
        args = parse_link_cli(["pair", host.announced, "not a code!"])
        assert await args.func(args) == 1
    finally:
        await host.close()


def test_relay_flags_and_envparse_link_cli() -> None:
    from keywire.link.relay import config

    args = parse_link_cli(["relay", "--port", "0", "--max-bps", "5", "--trust-proxy"])
    cfg = config.load({"LINK_RELAY_IDLE_SEC": "7", "LINK_RELAY_MAX_BPS": "9"}, args)
    assert (cfg.port, cfg.max_bps, cfg.idle_sec, cfg.trust_proxy) == (0, 5, 7.0, True)
    with pytest.raises(ValueError, match="LINK_RELAY_MAX_BPS"):
        config.load({"LINK_RELAY_MAX_BPS": "-1"})
    with pytest.raises(ValueError, match="allowed register key"):
        config.load({"LINK_ALLOWED_REGISTER_KEYS": "nonsense"})
