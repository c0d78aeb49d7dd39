"""Write authorisation on the map server: a bearer token for writes (and, if asked, reads);
refusals are clear, permanent, quick, and never show the token."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keywire
from keywire.errors import Code, DialError, StreamError
from keywire.options import Options
from keywire.store import HttpStore, MapServer, Role, StoreParams, StoreStream, format_secret
from keywire.store.backends.backend import StoreRefused
from keywire.store.mapserver.http1 import HttpError
from keywire.store.mapserver.mapauth import TokenPolicy, check_token, load_token
from keywire.store.tls import server_context

from .conftest import random_bytes
from .pki import Pki
from .roundtrip import echo_through_server
from .test_stream_memory import SECRET

TOKEN = "s3cret-T0ken_for.tests~"
ADDR = bytes(range(32))
FAST = dict(rto_min=0.05, rto_initial=0.2)
SRC = str(Path(__file__).resolve().parents[2] / "src")


async def raw(server: MapServer, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(1 << 20)
    finally:
        writer.close()


def put_request(auth: str | None, body: bytes = b"value") -> bytes:
    header = f"Authorization: {auth}\r\n".encode() if auth is not None else b""
    return (
        b"PUT /v1/"
        + ADDR.hex().encode()
        + b" HTTP/1.1\r\nHost: x\r\n"
        + header
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_writes_need_the_token_and_reads_stay_open(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with MapServer(token=TOKEN) as server:
        right = HttpStore(server.url, token=TOKEN)
        wrong = HttpStore(server.url, token="not-" + TOKEN)
        anonymous = HttpStore(server.url)
        try:
            async with asyncio.timeout(5):
                await right.put(ADDR, b"allowed")
                messages = []
                for store in (wrong, anonymous):
                    with pytest.raises(StoreRefused) as info:
                        await store.put(ADDR, b"refused")
                    messages.append(str(info.value))
                    assert await store.get(ADDR, 0) == b"allowed"  # reads are open
                    await store.probe()
                assert await right.get(ADDR, 0) == b"allowed"
            assert messages[0].startswith(
                f"map server {server.url} refused the write: missing or wrong token"
            )
            assert "wrong token" in messages[0] and "missing token" in messages[1]
            for message in messages:
                assert TOKEN not in message
        finally:
            for store in (right, wrong, anonymous):
                await store.close()
    assert TOKEN not in caplog.text


async def test_token_read_protects_reads_too() -> None:
    async with MapServer(token=TOKEN, token_read=True) as server:
        right = HttpStore(server.url, token=TOKEN)
        anonymous = HttpStore(server.url)
        try:
            async with asyncio.timeout(5):
                await right.put(ADDR, b"private")
                assert await right.get(ADDR, 0) == b"private"
                await right.probe()
                with pytest.raises(StoreRefused, match="refused the read: missing or wrong"):
                    await anonymous.get(ADDR, 0)
                with pytest.raises(StoreRefused, match="refused the read"):
                    await anonymous.probe()
                assert status(await raw(server, b"GET /v1 HTTP/1.1\r\n\r\n")) == 401
        finally:
            await right.close()
            await anonymous.close()


@pytest.mark.parametrize(
    ("auth", "expected", "says"),
    [
        (None, 401, b"missing token"),
        ("Bearer", 401, b"missing token"),
        ("Basic " + TOKEN, 401, b"missing token"),
        ("Bearer wrong", 401, b"wrong token"),
        ("Bearer " + TOKEN[:-1], 401, b"wrong token"),
        ("Bearer " + TOKEN + "x", 401, b"wrong token"),
        ("Bearer " + TOKEN, 204, b""),
        ("bearer  " + TOKEN + " ", 204, b""),  # the scheme is case-insensitive
    ],
)
async def test_raw_requests(auth: str | None, expected: int, says: bytes) -> None:
    async with MapServer(token=TOKEN) as server:
        response = await raw(server, put_request(auth))
        assert status(response) == expected, response
        assert says in response and TOKEN.encode() not in response
        if expected == 401:
            assert b'WWW-Authenticate: Bearer realm="keywire map"' in response
            assert server.table.get(ADDR, 0) is None
        # other mutating methods are refused before anything else is looked at
        assert (
            status(await raw(server, b"DELETE /v1/" + ADDR.hex().encode() + b" HTTP/1.1\r\n\r\n"))
            == 401
        )
        assert status(await raw(server, b"GET /v1 HTTP/1.1\r\n\r\n")) == 200


async def test_a_refused_write_fails_the_stream_at_once() -> None:
    async with MapServer(token=TOKEN) as server:
        store = HttpStore(server.url, token="wrong-token")
        stream = StoreStream.open(store, SECRET, Role.DIALER, params=StoreParams(**FAST))
        try:
            async with asyncio.timeout(5):
                with pytest.raises(StreamError) as info:
                    await stream.write(b"data")
                    await stream.sync()
            assert info.value.code == Code.PERMISSION_DENIED
            assert f"{server.url} refused the write: missing or wrong token" in str(info.value)
            assert "wrong-token" not in str(info.value)
            requests = server.requests
            await asyncio.sleep(0.5)
            assert server.requests - requests <= 2 * 16  # no retry loop: at most the
        finally:  # gets already in flight
            await stream.abort()
            await store.close()


async def test_dial_and_listen_with_the_token_setting(pki: Pki) -> None:
    """Over https with a token for reads and writes, through keywire.dial and keywire.Server."""
    tls = server_context(str(pki.server.cert), str(pki.server.key))
    good = Options(extra={"store.linger": 5.0, "store.cafile": str(pki.ca), "store.token": TOKEN})
    async with MapServer(tls=tls, token=TOKEN, token_read=True) as mapper:
        spec = f"{mapper.url}~stream:{format_secret(SECRET)}"
        for token in (None, "wrong"):
            extra = {"store.cafile": str(pki.ca)} | ({"store.token": token} if token else {})
            async with asyncio.timeout(5):
                with pytest.raises(DialError, match="refused the read: missing or wrong") as info:
                    await keywire.dial(spec, Options(extra=extra))
            assert info.value.permanent and TOKEN not in str(info.value)
            assert format_secret(SECRET) not in str(info.value)  # the address is redacted
            assert "~stream:…" in str(info.value)
            server = keywire.Server([f"{mapper.url}~stream"], Options(extra=extra))
            async with asyncio.timeout(5):
                with pytest.raises(Exception, match="refused the read"):
                    await server.start()
            await server.close()
        await echo_through_server(f"{mapper.url}~stream", good, random_bytes(300_000, 4))


# -- tokens and their loading ---------------------------------------------------------------------
def test_token_loading(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert load_token(str(path), {}) == TOKEN
    assert load_token(None, {"KEYWIRE_MAP_TOKEN": TOKEN + "\n"}) == TOKEN
    assert load_token(str(path), {"KEYWIRE_MAP_TOKEN": "other"}) == TOKEN  # the file wins
    assert load_token(None, {}) is None
    with pytest.raises(ValueError, match="cannot read the token file"):
        load_token(str(tmp_path / "missing"), {})
    for bad in ("", "has space", "tab\there", "ünïcode", "x" * 5000):
        with pytest.raises(ValueError, match="visible ASCII") as info:
            check_token(bad)
        assert not bad or bad not in str(info.value)
    with pytest.raises(ValueError, match="token_read needs a token"):
        MapServer(token_read=True)
    assert TOKEN not in repr(TokenPolicy(TOKEN))


@given(
    st.dictionaries(
        st.sampled_from(["authorization", "host", "x"]),
        st.one_of(
            st.text(max_size=60),
            st.sampled_from(
                ["Bearer " + TOKEN, "bearer " + TOKEN, "Bearer " + TOKEN[:-1], "Bearer"]
            ),
        ),
    ),
    st.sampled_from(["GET", "PUT", "DELETE", "POST", "HEAD"]),
    st.booleans(),
)
@settings(max_examples=500, deadline=None)
def test_policy_admits_exactly_the_token(
    headers: dict[str, str], method: str, protect_reads: bool
) -> None:
    policy = TokenPolicy(TOKEN, protect_reads=protect_reads)
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    has_token = scheme.lower() == "bearer" and value.strip() == TOKEN
    needs = protect_reads or method not in ("GET", "HEAD")
    try:
        policy.check(method, headers)
    except HttpError as exc:
        assert exc.status == 401 and needs and not has_token
        assert TOKEN not in exc.message
    else:
        assert has_token or not needs


def test_map_server_command_with_a_token(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("KEYWIRE_MAP_TOKEN", None)
    cli = [sys.executable, "-m", "keywire", "map-server", "--port", "0"]
    bad = subprocess.run([*cli, "--token-read"], capture_output=True, env=env, timeout=20)
    assert bad.returncode == 2 and b"--token-read needs --token-file" in bad.stderr
    (tmp_path / "empty").write_text("\n")
    bad = subprocess.run(
        [*cli, "--token-file", str(tmp_path / "empty")], capture_output=True, env=env, timeout=20
    )
    assert bad.returncode == 2 and b"visible ASCII" in bad.stderr
    for how in ("file", "env"):
        run_env = dict(env)
        args = [*cli, "--token-read"]
        if how == "file":
            (tmp_path / "token").write_text(TOKEN + "\n")
            args += ["--token-file", str(tmp_path / "token")]
        else:
            run_env["KEYWIRE_MAP_TOKEN"] = TOKEN
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().decode().strip()
            assert url.startswith("http://127.0.0.1:")

            async def use(url: str = url) -> None:
                right, anonymous = HttpStore(url, token=TOKEN), HttpStore(url)
                try:
                    async with asyncio.timeout(10):
                        await right.put(ADDR, b"with the token")
                        assert await right.get(ADDR, 0) == b"with the token"
                        with pytest.raises(StoreRefused, match="refused the read"):
                            await anonymous.get(ADDR, 0)
                finally:
                    await right.close()
                    await anonymous.close()

            asyncio.run(use())
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert b"reads and writes need the token" in err
        assert TOKEN.encode() not in out + err


def test_keywire_listen_and_dial_reach_a_protected_https_server(pki: Pki, tmp_path: Path) -> None:
    """The CLI clients take the token from $KEYWIRE_MAP_TOKEN and the CA from $SSL_CERT_FILE."""
    env = dict(
        os.environ,
        PYTHONPATH=SRC,
        KEYWIRE_MAP_TOKEN=TOKEN,
        SSL_CERT_FILE=str(pki.ca),
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    cli = [sys.executable, "-m", "keywire"]
    mapper = subprocess.Popen(
        [
            *cli,
            "map-server",
            "--port",
            "0",
            "--token-read",
            "--cert",
            str(pki.server.cert),
            "--key",
            str(pki.server.key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    listener = None
    try:
        assert mapper.stdout is not None
        url = mapper.stdout.readline().decode().strip()
        assert url.startswith("https://")
        listener = subprocess.Popen(
            [*cli, "listen", f"{url}~stream", "--echo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert listener.stdout is not None
        address = listener.stdout.readline().decode().strip()
        assert address.startswith(f"{url}~stream:")
        done = subprocess.run(
            [*cli, "dial", address],
            input=b"through https with a token\n",
            capture_output=True,
            env=env,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == b"through https with a token\n"
        wrong = dict(env, KEYWIRE_MAP_TOKEN="wrong")
        refused = subprocess.run(
            [*cli, "dial", address], input=b"", capture_output=True, env=wrong, timeout=30
        )
        assert refused.returncode != 0
        assert b"refused the read: missing or wrong token" in refused.stderr
        not_listening = subprocess.run(
            [*cli, "listen", f"{url}~stream", "--echo"], capture_output=True, env=wrong, timeout=30
        )
        assert not_listening.returncode == 2
        assert b"cannot listen: " in not_listening.stderr
        assert b"refused the read: missing or wrong token" in not_listening.stderr
        assert b"Traceback" not in refused.stderr + not_listening.stderr
        assert TOKEN.encode() not in refused.stderr + done.stderr + not_listening.stderr
    finally:
        for proc in (listener, mapper):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
