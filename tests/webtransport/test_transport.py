"""The ``webtransport`` transport from Python: addresses, echo, the binding, restarts, the CLI."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

import pytest

import keywire
from keywire.address import parse
from keywire.errors import AddressError, DialError, HandshakeError, PinMismatch
from keywire.identity import Identity
from keywire.kps.settings import KpsSettings
from keywire.options import Options
from keywire.stream import Connection
from keywire.webtransport.address import dial_target
from keywire.webtransport.binding import BindingError
from keywire.webtransport.certs import CertStore
from keywire.webtransport.dialer import dial_webtransport
from keywire.webtransport.listener import WebTransportListener

pytestmark = pytest.mark.timeout(60)


def _key(identity: Identity) -> str:
    return base64.b64encode(identity.public_key).decode()


async def test_listen_announces_key_and_two_hashes_and_echoes() -> None:
    identity = Identity.generate()
    async with asyncio.timeout(20):
        async with keywire.Server(["webtransport:127.0.0.1:0"], Options(identity=identity)) as srv:
            address = srv.address()
            section = parse(address).alternatives[0].transport
            assert section.name == "webtransport"
            target = dial_target(section)
            assert target.host == "127.0.0.1"
            assert target.public_key == identity.public_key
            assert len(target.certhashes) == 2 and len(set(target.certhashes)) == 2
            assert target.certhashes[0] != identity.certhash  # not the 200-year KPS cert
            client = await keywire.dial(address)
            accepted = await srv.accept()
            assert client.remote.public_key == identity.public_key
            stream = await client.open_stream()
            payload = os.urandom(3 << 20)
            await stream.write(payload)
            await stream.close_write()
            incoming = await accepted.accept_stream()
            assert await incoming.read_all() == payload
            await incoming.write(payload[::-1])
            await incoming.close_write()
            assert await stream.read_all() == payload[::-1]
            assert str(accepted.address).startswith("webtransport:127.0.0.1:")
            await client.close()
            closed = await accepted.wait_closed()
            assert closed.code == 0 and closed.remote


async def test_a_certificate_signed_by_another_key_is_refused_before_any_stream() -> None:
    """The address names identity A; the listener (identity B) presents a pinned certificate
    that B signed. TLS succeeds, the binding does not: the dial fails, no stream is handed out."""
    claimed, impostor = Identity.generate(), Identity.generate()
    accepted: list[Connection] = []

    async def on_connection(conn: Connection) -> None:
        accepted.append(conn)

    listener = WebTransportListener(impostor, KpsSettings(), on_connection)
    await listener.start("127.0.0.1", 0)
    try:
        hashes = ":".join(c.certhash for c in listener.certs.pair())
        forged = f"webtransport:127.0.0.1:{listener.port}:{_key(claimed)}:{hashes}"
        with pytest.raises(DialError) as caught:
            await asyncio.wait_for(keywire.dial(forged), 20)
        error = caught.value.attempts[0].error
        assert isinstance(error, BindingError), caught.value
        assert "not signed by the identity key" in str(error)
        assert caught.value.permanent
        # the true key dials fine
        genuine = forged.replace(_key(claimed), _key(impostor))
        conn = await asyncio.wait_for(keywire.dial(genuine), 20)
        await conn.close()
    finally:
        await listener.close(abort_connections=True)


async def test_an_address_mixing_in_another_keys_certificate_is_refused() -> None:
    """What a browser cannot tell apart (which pinned hash TLS matched) must fail too: every
    pinned hash needs the identity's signature."""
    owner = Identity.generate()
    stranger = CertStore(Identity.generate()).current()
    listener = WebTransportListener(owner, KpsSettings(), lambda conn: asyncio.sleep(0))
    await listener.start("127.0.0.1", 0)
    try:
        current = listener.certs.current()
        hashes = f"{current.certhash}:{stranger.certhash}"
        mixed = f"webtransport:127.0.0.1:{listener.port}:{_key(owner)}:{hashes}"
        target = dial_target(parse(mixed).alternatives[0].transport)
        with pytest.raises(BindingError, match="not signed by the identity key"):
            await dial_webtransport(target, KpsSettings(handshake_timeout=10))
    finally:
        await listener.close(abort_connections=True)


async def test_a_certificate_not_pinned_fails_with_pin_mismatch() -> None:
    owner = Identity.generate()
    listener = WebTransportListener(owner, KpsSettings(), lambda conn: asyncio.sleep(0))
    await listener.start("127.0.0.1", 0)
    try:
        wrong = CertStore(Identity.generate()).current().certhash
        address = f"webtransport:127.0.0.1:{listener.port}:{_key(owner)}:{wrong}"
        with pytest.raises(PinMismatch):
            await dial_webtransport(
                dial_target(parse(address).alternatives[0].transport), KpsSettings()
            )
    finally:
        await listener.close(abort_connections=True)


async def test_a_request_for_another_path_gets_404_and_no_session() -> None:
    """Anything but the extended CONNECT to /keywire is answered 404 (the listener looks like
    an HTTP/3 server with nothing there); the application never sees that connection."""
    owner = Identity.generate()
    accepted: list[Connection] = []

    async def on_connection(conn: Connection) -> None:
        accepted.append(conn)

    listener = WebTransportListener(owner, KpsSettings(), on_connection)
    await listener.start("127.0.0.1", 0)
    try:
        hashes = ":".join(c.certhash for c in listener.certs.pair())
        address = f"webtransport:127.0.0.1:{listener.port}:{_key(owner)}:{hashes}"
        target = dial_target(parse(address).alternatives[0].transport)
        with pytest.raises(HandshakeError, match="answered status '404'") as caught:
            await dial_webtransport(target, KpsSettings(), path="/index.html")
        assert not isinstance(caught.value, BindingError)
        conn = await dial_webtransport(target, KpsSettings())
        await conn.close()
        await asyncio.sleep(0.1)
        assert len(accepted) == 1
    finally:
        await listener.close(abort_connections=True)


async def test_a_restarted_listener_keeps_its_hashes(tmp_path: Path) -> None:
    key_file = tmp_path / "identity.pem"
    announced = []
    for _ in range(2):
        options = Options(identity=Identity.load_or_create(key_file))
        async with keywire.Server(["webtransport:127.0.0.1:0"], options) as server:
            address = server.address()
            announced.append(address.split(":", 3)[3])  # KEY:HASH:HASH (the port changes)
            conn = await asyncio.wait_for(keywire.dial(address), 20)
            await conn.close()
    assert announced[0] == announced[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("webtransport:127.0.0.1:443", "':HOST:PORT:KEY:CERTHASH'"),
        ("webtransport:127.0.0.1:0:" + "A" * 43 + "=:uEi" + "A" * 44, "a decimal port"),
        ("webtransport:127.0.0.1:443:notakey:uEi" + "A" * 44, "an Ed25519 key"),
        (
            "webtransport:127.0.0.1:443:" + "A" * 43 + "=:" + ":".join(["uEi" + "A" * 44] * 5),
            "1 to 4",
        ),
        ("webtransport:127.0.0.1:443:" + "A" * 43 + "=:uAAA" + "A" * 43, "sha2-256 multihash"),
    ],
)
def test_bad_addresses_are_refused_with_the_reason(text: str, expected: str) -> None:
    with pytest.raises(AddressError, match=expected):
        dial_target(parse(text).alternatives[0].transport)


def test_ipv6_hosts_are_written_bare_and_parse_back() -> None:
    key = "A" * 43 + "="
    digest = "uEi" + "A" * 44
    target = dial_target(parse(f"webtransport:::1:4433:{key}:{digest}").alternatives[0].transport)
    assert (target.host, target.port, target.certhashes) == ("::1", 4433, (digest,))
    assert target.url() == "https://[::1]:4433/keywire"


RUNNER = "import sys\nfrom keywire.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def test_cli_listen_announces_webtransport_and_dial_pipes(tmp_path: Path) -> None:
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUNNER, "listen", "webtransport:127.0.0.1:0", "--echo",
        "--key", str(tmp_path / "server.pem"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        line = await asyncio.wait_for(listener.stdout.readline(), 20)
        address = line.decode().strip()
        assert address.startswith("webtransport:127.0.0.1:"), address
        assert (tmp_path / "server.pem.webtransport.json").is_file()
        payload = os.urandom(300_000)
        dialer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RUNNER, "dial", address, "--key", str(tmp_path / "client.pem"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_env(),
        )  # fmt: skip
        out, err = await asyncio.wait_for(dialer.communicate(payload), 30)
        assert dialer.returncode == 0, err.decode()
        assert out == payload
    finally:
        listener.terminate()
        await asyncio.wait_for(listener.wait(), 10)
