"""The command line as a user runs it: real processes, stdout/stderr, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from keywire.identity import Identity

from .cli_util import listener, run

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("command", [
    [], ["listen"], ["dial"], ["id"], ["bench"], ["relay"], ["pair"], ["credentials"],
    ["credentials", "list"], ["credentials", "revoke"], ["credentials", "forget"],
    ["map-server"],
])
async def test_help_everywhere(command: list[str]) -> None:
    code, out, _ = await run(*command, "--help")
    assert code == 0
    assert b"usage: keywire" in out


def test_every_argument_of_every_command_says_what_it_is() -> None:
    import argparse

    from keywire.cli import build_parser

    silent: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help and not isinstance(action, argparse._HelpAction):
                silent.append(f"{path}: {action.option_strings or action.dest}")

    walk(build_parser(), "keywire")
    assert silent == []


async def test_id_prints_identity(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    code, out, _ = await run("id", "--key", str(key), "--json")
    assert code == 0
    info = json.loads(out)
    ident = Identity.load(key)
    assert info == {"certhash": ident.certhash, "shs": ident.shs_id, "ssb": ident.ssb_id,
                    "file": str(key)}
    code, out, _ = await run("id", "--key", str(key))
    assert out.decode().splitlines()[0] == f"certhash: {ident.certhash}"


async def test_listen_then_dial_pipes_bytes() -> None:
    payload = os.urandom(200_000)
    async with listener("net:127.0.0.1:0~noauth", "--scope", "device") as (address, _):
        assert address.startswith("net:127.0.0.1:") and address.endswith("~noauth")
        code, out, err = await run("dial", address, stdin=payload)
        assert code == 0, err
        assert out == payload


async def test_listen_exec_and_forward() -> None:
    async with listener("net:127.0.0.1:0~noauth", "--scope", "device",
                        "--exec", "tr a-z A-Z") as (address, _):
        code, out, _ = await run("dial", address, stdin=b"shout please")
        assert (code, out) == (0, b"SHOUT PLEASE")

    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data[::-1])
        writer.close()

    backend = await asyncio.start_server(upper, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    try:
        async with listener("net:127.0.0.1:0~noauth", "--scope", "device",
                            "--forward", f"127.0.0.1:{port}") as (address, _):
            code, out, _ = await run("dial", address, stdin=b"abc")
            assert (code, out) == (0, b"cba")
    finally:
        backend.close()


async def test_dial_forward_local() -> None:
    async with listener("net:127.0.0.1:0~noauth", "--scope", "device") as (address, _):
        proc = await asyncio.create_subprocess_exec(
            *(await _keywire()), "dial", address, "--forward-local", "127.0.0.1:0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            local = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
            host, port = local.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"through the tunnel")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"through the tunnel"
            writer.close()
        finally:
            proc.terminate()
            await proc.wait()


async def _keywire() -> list[str]:
    from .cli_util import KEYWIRE

    return KEYWIRE


async def test_exit_codes() -> None:
    code, _, err = await run("dial", "net:127.0.0.1:1~noauth")
    assert code == 3 and b"could not dial" in err
    code, _, err = await run("dial", "n et")
    assert code == 2 and b"position 1" in err
    code, _, err = await run("listen", "bogus!")
    assert code == 2 and b"bad address" in err
    code, _, err = await run("listen", "zz:1")
    assert code == 2 and b"unknown transport" in err


async def test_bad_key_file(tmp_path: Path) -> None:
    key = tmp_path / "broken.pem"
    key.write_text("garbage")
    code, _, err = await run("id", "--key", str(key))
    assert code == 2 and b"no P-256" in err


async def test_listen_defaults_serve_kps_net_and_ws() -> None:
    """With no SPEC (the README's first command) the listener serves its embedded defaults;
    every alternative it prints is dialable and echoes."""
    async with listener("--scope", "device") as (address, _):
        alts = address.split(";")
        assert [a.split(":", 1)[0] for a in alts] == ["kps", "net", "ws"]
        assert alts[0].startswith("kps:127.0.0.1:")
        assert "~shs:" in alts[1] and alts[1].endswith("~mux")
        assert alts[2].startswith("ws://127.0.0.1:") and alts[2].endswith("~mux")
        for alt in alts:
            code, out, err = await run("dial", alt, stdin=b"default " + alt.encode())
            assert (code, out) == (0, b"default " + alt.encode()), err
