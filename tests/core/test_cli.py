"""The command line as a user runs it: real processes, stdout/stderr, exit codes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from keywire.identity import Identity

from .cli_util import KEYWIRE, Running, listener, run, stdio_listener, stop

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["listen"],
        ["dial"],
        ["id"],
        ["bench"],
        ["relay"],
        ["pair"],
        ["credentials"],
        ["credentials", "list"],
        ["credentials", "revoke"],
        ["credentials", "forget"],
        ["map-server"],
    ],
)
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
    assert info == {
        "certhash": ident.certhash,
        "shs": ident.shs_id,
        "ssb": ident.ssb_id,
        "file": str(key),
    }
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
    async with listener("net:127.0.0.1:0~noauth", "--scope", "device", "--exec", "tr a-z A-Z") as (
        address,
        _,
    ):
        code, out, _ = await run("dial", address, stdin=b"shout please")
        assert (code, out) == (0, b"SHOUT PLEASE")

    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data[::-1])
        writer.close()

    backend = await asyncio.start_server(upper, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    try:
        async with listener(
            "net:127.0.0.1:0~noauth", "--scope", "device", "--forward", f"127.0.0.1:{port}"
        ) as (address, _):
            code, out, _ = await run("dial", address, stdin=b"abc")
            assert (code, out) == (0, b"cba")
    finally:
        backend.close()


async def test_dial_forward_local() -> None:
    async with listener("net:127.0.0.1:0~noauth", "--scope", "device") as (address, _):
        proc = await asyncio.create_subprocess_exec(
            *(await _keywire()),
            "dial",
            address,
            "--forward-local",
            "127.0.0.1:0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
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


# ---------------------------------------------------------------------------------------------
# netcat semantics: each direction ends on its own, nothing is lost, exit codes tell the truth

CHAINS = {
    "net~shs": "net:127.0.0.1:0~shs",
    "net~shs~mux": "net:127.0.0.1:0~shs~mux",
    "kps": "kps:127.0.0.1:0",
}
BIG = 3_000_000


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("other", ["empty", "full"])
@pytest.mark.parametrize("sender", ["listener", "dialer"])
@pytest.mark.parametrize("chain", list(CHAINS))
async def test_stdio_both_ways(tmp_path: Path, chain: str, sender: str, other: str) -> None:
    """3 MB one way while the other side's stdin is empty (or 3 MB as well): each side gets
    exactly the other's bytes, both exit 0, the listener's stdout holds nothing else."""
    main, back = os.urandom(BIG), (os.urandom(BIG) if other == "full" else b"")
    lis_in, dial_in = (main, back) if sender == "listener" else (back, main)
    (tmp_path / "lis").write_bytes(lis_in)
    (tmp_path / "dial").write_bytes(dial_in)
    lis, address = await stdio_listener(CHAINS[chain], stdin=tmp_path / "lis")
    try:
        dialer = await Running.start("dial", address, stdin=tmp_path / "dial")
        dial_code = await dialer.finish(60)
        lis_code = await lis.finish(30)
    finally:
        await lis.close()
    assert (dial_code, lis_code) == (0, 0), (dialer.err.decode(), lis.err.decode())
    assert len(dialer.out) == len(lis_in) and _sha(bytes(dialer.out)) == _sha(lis_in)
    assert len(lis.out) == len(dial_in) and _sha(bytes(lis.out)) == _sha(dial_in)
    summary = dialer.err.decode().strip().splitlines()[-1]
    assert f"sent {len(dial_in)} bytes" in summary and f"received {len(lis_in)} bytes" in summary
    assert f"over {chain} (direct)" in summary


async def test_truncated_transfer_exits_1_with_counts(tmp_path: Path) -> None:
    """The listener dies mid-session: the dialer exits 1 and says how far each way got."""
    lis, address = await stdio_listener("net:127.0.0.1:0~shs~mux")
    try:
        dialer = await Running.start("dial", address, pipe_stdin=True)
        assert dialer.proc.stdin is not None
        dialer.proc.stdin.write(b"x" * 100_000)
        await dialer.proc.stdin.drain()
        async with asyncio.timeout(20):
            while len(lis.out) < 100_000:
                await asyncio.sleep(0.05)
        lis.proc.kill()
        code = await dialer.finish(30)
    finally:
        await lis.close()
    err = dialer.err.decode()
    assert code == 1, err
    assert "transfer incomplete" in err and "sent 100000 bytes" in err, err


async def test_peer_reset_is_named_and_exits_1(tmp_path: Path) -> None:
    """An --exec child that stops reading makes the listener stop the stream; the dialer's
    writes fail with the peer's code, its output still arrives, and it exits 1."""
    (tmp_path / "in").write_bytes(os.urandom(BIG))
    async with listener(
        "net:127.0.0.1:0~shs~mux", "--scope", "device", "--exec", "head -c 10 >/dev/null; echo bye"
    ) as (address, _):
        dialer = await Running.start("dial", address, stdin=tmp_path / "in")
        code = await dialer.finish(30)
    err = dialer.err.decode()
    assert code == 1, err
    assert bytes(dialer.out) == b"bye\n"
    assert "from the peer" in err and "transfer incomplete" in err, err


# ---------------------------------------------------------------------------------------------
# stdout/stderr discipline, --json, --exec environment, --allow


async def test_json_events_parse(tmp_path: Path) -> None:
    payload = os.urandom(50_000)
    async with listener("net:127.0.0.1:0~shs~mux", "--scope", "device", "--json") as (address, lis):
        code, out, err = await run("dial", address, "--json", stdin=payload)
        assert code == 0, err
        assert out == payload
        await stop(lis)
        assert lis.stderr is not None
        lis_err = await lis.stderr.read()
    dial_events = [json.loads(line) for line in err.decode().splitlines()]
    lis_events = [json.loads(line) for line in lis_err.decode().splitlines()]
    kinds = [e["event"] for e in dial_events]
    assert kinds[0] == "connected" and kinds[-1] == "closed", kinds
    connected = dial_events[0]
    assert connected["transport"] == "net~shs~mux" and connected["relayed"] is False
    assert connected["peer"].endswith(".ed25519") and connected["peer_key"]
    closed = dial_events[-1]
    assert closed["ok"] is True and closed["sent"] == closed["received"] == len(payload)
    names = [e["event"] for e in lis_events]
    assert names[0] == "listening" and lis_events[0]["address"] == address
    assert "connected" in names and "stream_opened" in names
    stream_closed = next(e for e in lis_events if e["event"] == "stream_closed")
    assert stream_closed["sent"] == stream_closed["received"] == len(payload)
    assert stream_closed["ok"] is True


async def test_exec_child_learns_peer(tmp_path: Path) -> None:
    client_key = tmp_path / "client.pem"
    client = Identity.load_or_create(client_key)
    script = 'printf "%s|%s|%s" "$KEYWIRE_PEER" "$KEYWIRE_TRANSPORT" "$KEYWIRE_ADDRESS"'
    async with listener("net:127.0.0.1:0~shs", "--scope", "device", "--exec", script) as (
        address,
        _,
    ):
        code, out, err = await run("dial", address, "--key", str(client_key))
    assert code == 0, err
    peer, transport, addr = out.decode().split("|")
    assert peer == f"@{client.shs_id}.ed25519"
    assert transport == "net~shs"
    assert addr.startswith("net:127.0.0.1:") and addr.endswith(f"~shs:{client.shs_id}")


async def test_allow_refuses_other_keys(tmp_path: Path) -> None:
    friend, stranger = tmp_path / "friend.pem", tmp_path / "stranger.pem"
    friend_id = Identity.load_or_create(friend)
    Identity.load_or_create(stranger)
    keys = tmp_path / "keys"
    keys.write_text(f"# who may connect\n@{friend_id.shs_id}.ed25519  laptop\n")
    async with listener(
        "net:127.0.0.1:0~shs", "kps:127.0.0.1:0", "--scope", "device", "--allow-file", str(keys)
    ) as (address, lis):
        shs_alt = next(a for a in address.split(";") if a.startswith("net:"))
        kps_alt = next(a for a in address.split(";") if a.startswith("kps:"))
        code, out, err = await run("dial", shs_alt, "--key", str(friend), stdin=b"hi")
        assert (code, out) == (0, b"hi"), err
        code, out, err = await run("dial", shs_alt, "--key", str(stranger), stdin=b"hi")
        assert code == 3 and out == b"", err
        # kps proves no client key: refused before any stream, never silently let in
        code, out, err = await run("dial", kps_alt, "--key", str(friend), stdin=b"hi")
        assert code == 1 and out == b"", err
        await stop(lis)
        assert lis.stderr is not None
        lis_err = (await lis.stderr.read()).decode()
    assert "clients of kps:" in lis_err and "will be refused" in lis_err
    assert "is not in --allow" in lis_err
    assert "kps proves no client identity" in lis_err


async def test_allow_bad_key_exits_2() -> None:
    code, _, err = await run("listen", "net:127.0.0.1:0~shs", "--allow", "nope")
    assert code == 2 and b"not an shs public key" in err


# ---------------------------------------------------------------------------------------------
# ending cleanly, and errors that are the user's to fix


async def test_sigterm_ends_listen_gracefully() -> None:
    async with listener("net:127.0.0.1:0~shs~mux", "--scope", "device") as (address, lis):
        code, out, _ = await run("dial", address, stdin=b"before")
        assert (code, out) == (0, b"before")
        lis.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(lis.wait(), 15) == 0
        assert lis.stderr is not None
        assert b"Traceback" not in await lis.stderr.read()
    # --stdio still waiting for its peer: SIGTERM is a clean end too
    lis2, _ = await stdio_listener("net:127.0.0.1:0~shs")
    try:
        lis2.proc.send_signal(signal.SIGTERM)
        assert await lis2.finish(15) == 0, lis2.err.decode()
        assert bytes(lis2.out) == b""
    finally:
        await lis2.close()


async def test_port_in_use_exits_2_with_one_line() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        code, out, err = await run("listen", "--no-qr", f"net:127.0.0.1:{port}~shs")
        assert (code, out) == (2, b"")
        assert err.decode().strip().splitlines() == [
            "keywire: cannot listen: address already in use"
        ]
        code, out, err = await run(
            "listen", "--no-qr", "kps:127.0.0.1:0", "--web", f"127.0.0.1:{port}"
        )
        assert code == 2, err
        assert b"Traceback" not in err and b"--web" in err and b"already in use" in err
    finally:
        blocker.close()


async def test_malformed_alternative_exits_2() -> None:
    code, _, err = await run("dial", "net:127.0.0.1:1~noauth;net:127.0.0.1:x~shs")
    assert code == 2, err


async def test_server_key_off_the_curve_is_named() -> None:
    """A key that is no valid Ed25519 point is named as such, not blamed on the app key."""
    not_a_point = base64.b64encode((2).to_bytes(32, "little")).decode()
    async with listener("net:127.0.0.1:0~shs", "--scope", "device") as (address, _):
        wrong = address.rsplit("~shs:", 1)[0] + f"~shs:{not_a_point}"
        code, _, err = await run("dial", wrong, "--retry", "3")
    assert code == 3, err
    assert b"not a valid Ed25519 public key" in err and b"app key" not in err
    assert b"retrying" not in err


async def test_missing_link_credential_is_not_retried() -> None:
    address = "ws://127.0.0.1:1/v1/link~link:" + base64.urlsafe_b64encode(
        bytes(32)
    ).decode().rstrip("=")
    started = time.monotonic()
    code, _, err = await run("dial", address, "--retry", "4")
    assert code == 3 and b"no credential" in err, err
    assert b"retrying" not in err
    assert time.monotonic() - started < 15


async def test_kps_timers_from_the_command_line() -> None:
    """--idle-timeout/--keepalive reach kps: a session idle for several idle timeouts stays up
    and still delivers; a keepalive not below the idle timeout is refused."""
    code, _, err = await run("dial", "kps:127.0.0.1:1:x", "--idle-timeout", "2", "--keepalive", "2")
    assert code == 2 and b"must be shorter" in err
    code, _, err = await run("dial", "kps:127.0.0.1:1:x", "--idle-timeout", "0")
    assert code == 2
    timers = ("--idle-timeout", "1", "--keepalive", "0.3")
    async with listener("kps:127.0.0.1:0", "--scope", "device", *timers) as (address, _):
        dialer = await Running.start("dial", address, *timers, pipe_stdin=True)
        assert dialer.proc.stdin is not None
        dialer.proc.stdin.write(b"first ")
        await dialer.proc.stdin.drain()
        await asyncio.sleep(3.5)
        dialer.proc.stdin.write(b"after idling")
        dialer.proc.stdin.close()
        code = await dialer.finish(30)
    assert code == 0, dialer.err.decode()
    assert bytes(dialer.out) == b"first after idling"


async def test_echo_ends_its_half_when_the_peer_resets(tmp_path: Path) -> None:
    """`listen --echo` answers a reset (or stop-sending) by ending its own half, as KPS's echo
    does, instead of holding the stream until the connection ends."""
    from keywire import dial
    from keywire.errors import StreamError

    async with listener("net:127.0.0.1:0~shs~mux", "kps:127.0.0.1:0", "--scope", "device") as (
        address,
        _,
    ):
        for alt in address.split(";"):
            conn = await dial(alt)
            try:
                for action in ("reset", "stop_sending"):
                    stream = await conn.open_stream()
                    await stream.write(b"ping")
                    assert await asyncio.wait_for(stream.readexactly(4), 10) == b"ping"
                    getattr(stream, action)(7 if action == "reset" else 8)
                    with pytest.raises(StreamError):
                        async with asyncio.timeout(10):
                            while await stream.read():
                                pass
            finally:
                await conn.close()


async def test_credentials_list_json() -> None:
    code, out, err = await run("credentials", "list", "--json")
    assert code == 0, err
    assert json.loads(out) == {"credentials": [], "devices": [], "recovery_keys": []}


async def test_default_address_and_qr_fit_80x24() -> None:
    """With no SPEC and --qr, what a person sees (address, status, QR) fits 80×24, or the QR
    code is skipped with a note."""
    env = {"COLUMNS": "80", "LINES": "24"}
    lis = await Running.start("listen", "--qr", env=env)
    try:
        await lis.wait_for_err("identity ")
        await asyncio.sleep(1.0)
    finally:
        await lis.close()
    address = bytes(lis.out).decode().splitlines()[0]
    err = bytes(lis.err).decode()
    shown = [address, *(line for line in err.splitlines() if "terminated" not in line)]
    rows = sum(max(1, -(-len(line) // 80)) for line in shown)
    has_qr = "█" in err or "▀" in err or "▄" in err
    assert has_qr or "no QR code" in err, err
    if has_qr:
        assert rows <= 24, err
        assert max(len(line) for line in err.splitlines() if "█" in line or "▀" in line) <= 80


async def test_stdio_waits_past_a_connection_without_streams(tmp_path: Path) -> None:
    """A connection that ends before opening a stream (a probe, `keywire pair` on a Link host)
    moved no data: `listen --stdio` keeps waiting and serves the next one."""
    from keywire import dial

    (tmp_path / "in").write_bytes(b"for the real peer")
    lis, address = await stdio_listener("net:127.0.0.1:0~shs~mux", stdin=tmp_path / "in")
    try:
        probe = await dial(address)
        await probe.close()
        code, out, err = await run("dial", address, stdin=b"hello listener")
        assert (code, out) == (0, b"for the real peer"), err
        assert await lis.finish(30) == 0, lis.err.decode()
    finally:
        await lis.close()
    assert bytes(lis.out) == b"hello listener"
    assert "still listening" in lis.err.decode()


async def test_progress_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal, dial shows live progress (the total known from a regular
    file on stdin) and then the summary line."""
    import pty

    (tmp_path / "in").write_bytes(os.urandom(BIG))
    lis, address = await stdio_listener("net:127.0.0.1:0~shs~mux")
    master, slave = pty.openpty()
    try:
        with (tmp_path / "in").open("rb") as source:
            proc = await asyncio.create_subprocess_exec(
                *KEYWIRE,
                "dial",
                address,
                stdin=source,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=slave,
                env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
            )
        os.close(slave)
        slave = -1
        screen = bytearray()
        loop = asyncio.get_running_loop()

        def drain() -> None:
            with contextlib.suppress(OSError):
                while chunk := os.read(master, 65536):
                    screen.extend(chunk)

        reader = loop.run_in_executor(None, drain)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        await asyncio.wait_for(reader, 10)
        assert await lis.finish(30) == 0
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
        await lis.close()
    text = screen.decode(errors="replace")
    assert "/3.0 MB" in text, text  # the bar (done/total), which knows the file's size
    assert f"done: sent {BIG} bytes" in text, text


@pytest.mark.parametrize("flag", ["--qr", "--no-qr"])
async def test_no_qr_also_drops_the_pairing_code_qr(tmp_path: Path, flag: str) -> None:
    """`listen --pairing-code` prints the code either way; its QR code only without --no-qr."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "200", "LINES": "200"}
    relay = await Running.start("relay", "--host", "127.0.0.1", "--port", "0", env=env)
    try:
        async with asyncio.timeout(20):
            while b"\n" not in relay.out:
                assert relay.proc.returncode is None, relay.err.decode()
                await asyncio.sleep(0.05)
        url = bytes(relay.out).decode().splitlines()[0].strip()
        lis = await Running.start(
            "listen",
            flag,
            f"{url}~link",
            "--key",
            str(tmp_path / "k.pem"),
            "--pairing-code",
            env=env,
        )
        try:
            await lis.wait_for_err("pair with:")
            await asyncio.sleep(0.5)
        finally:
            await lis.close()
    finally:
        await relay.close()
    err = bytes(lis.err).decode()
    assert "pairing code: " in err
    blocks = sum(err.count(c) for c in "█▀▄")
    if flag == "--no-qr":
        assert blocks == 0, err
    else:
        assert blocks > 100, err  # the address QR and the pairing-code QR


async def test_stdio_session_refuses_later_dialers_at_once() -> None:
    """`listen --stdio` takes one session: once it runs, another dial is refused promptly
    (exit 3) and the running session still completes."""
    lis = await Running.start(
        "listen", "--no-qr", "--stdio", "net:127.0.0.1:0~shs~mux", pipe_stdin=True
    )
    first: Running | None = None
    try:
        line = await lis.wait_for_err("listening on ")
        address = line.split("listening on ", 1)[1].strip()
        first = await Running.start("dial", address, pipe_stdin=True)
        assert first.proc.stdin is not None and lis.proc.stdin is not None
        first.proc.stdin.write(b"first session")
        async with asyncio.timeout(20):
            while bytes(lis.out) != b"first session":
                await asyncio.sleep(0.05)
        started = time.monotonic()
        code, _, err = await run("dial", address, "--timeout", "20", timeout=30)
        assert code == 3, err
        assert time.monotonic() - started < 5, err
        lis.proc.stdin.write(b"answer")
        lis.proc.stdin.close()
        first.proc.stdin.close()
        assert await first.finish(30) == 0, first.err.decode()
        assert await lis.finish(30) == 0, lis.err.decode()
        assert bytes(first.out) == b"answer"
    finally:
        if first is not None:
            await first.close()
        await lis.close()


async def test_map_server_max_connections_per_ip() -> None:
    """`map-server --max-connections-per-ip 2`: a third open connection from 127.0.0.1 gets a
    503; a bad value exits 2."""
    code, _, err = await run("map-server", "--max-connections-per-ip", "0")
    assert code == 2 and b"--max-connections-per-ip" in err
    server = await Running.start("map-server", "--port", "0", "--max-connections-per-ip", "2")
    held: list[asyncio.StreamWriter] = []
    try:
        async with asyncio.timeout(20):
            while b"\n" not in server.out:
                assert server.proc.returncode is None, server.err.decode()
                await asyncio.sleep(0.05)
            url = bytes(server.out).decode().splitlines()[0].strip()
            host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
            for _ in range(2):
                _, writer = await asyncio.open_connection(host, int(port))
                held.append(writer)
            reader, writer = await asyncio.open_connection(host, int(port))
            held.append(writer)
            answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"too many connections from your address" in answer
    finally:
        for writer in held:
            writer.close()
        await server.close()
