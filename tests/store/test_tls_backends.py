"""Store streams over TLS: the map server over https and Redis over rediss://, with a CA made
by the tests; certificates the client does not trust fail at once, clearly, and for good."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keywire
from keywire.errors import Code, DialError, StreamError
from keywire.options import Options
from keywire.store import (
    HttpStore,
    MapServer,
    RedisStore,
    Role,
    StoreParams,
    StoreStream,
    format_secret,
)
from keywire.store.backends.backend import StoreBackend, StoreError, StoreRefused
from keywire.store.tls import server_context

from .conftest import RedisProcess, random_bytes
from .pki import Pki, ServerFiles
from .roundtrip import echo_through_server
from .test_stream_memory import MB8, SECRET, exchange

ADDR = bytes(range(32))
FAST = dict(rto_min=0.05, rto_initial=0.2)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def https_server(files: ServerFiles, **kwargs: object) -> MapServer:
    return MapServer(tls=server_context(str(files.cert), str(files.key)), **kwargs)  # type: ignore[arg-type]


async def assert_refused_quickly(store: StoreBackend, *fragments: str) -> str:
    """A put and a get both fail with ``StoreRefused`` within 5 s; returns the message."""
    async with asyncio.timeout(5):
        with pytest.raises(StoreRefused) as put:
            await store.put(ADDR, b"value")
        with pytest.raises(StoreRefused):
            await store.get(ADDR, 1.0)
    message = str(put.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


async def assert_stream_fails_quickly(store: StoreBackend, *fragments: str) -> None:
    """A stream over ``store`` ends with permission-denied instead of retrying for ever."""
    stream = StoreStream.open(store, SECRET, Role.DIALER, params=StoreParams(**FAST))
    try:
        async with asyncio.timeout(5):
            with pytest.raises(StreamError) as info:
                await stream.write(b"x")
                await stream.sync()
        assert info.value.code == Code.PERMISSION_DENIED
        for fragment in fragments:
            assert fragment in str(info.value), str(info.value)
        async with asyncio.timeout(5):
            with pytest.raises(StreamError):
                await stream.read()
    finally:
        await stream.abort()


# -- https ---------------------------------------------------------------------------------------
async def test_8mb_each_way_over_https(pki: Pki) -> None:
    async with https_server(pki.server) as server:
        assert server.url.startswith("https://127.0.0.1:")
        a, b = HttpStore(server.url, cafile=str(pki.ca)), HttpStore(server.url, cafile=str(pki.ca))
        try:
            await exchange(a, b, StoreParams(window=16, value_size=65536, **FAST), MB8, 30)
        finally:
            await a.close()
            await b.close()


@pytest.mark.parametrize(
    ("which", "cafile", "reason"),
    [
        ("server", None, "unable to get local issuer certificate"),  # system trust store
        ("other_ca", "ca", "unable to get local issuer certificate"),
        ("self_signed", "ca", "self-signed certificate"),
        ("wrong_name", "ca", "mismatch"),
    ],
)
async def test_untrusted_https_certificate_fails_clearly(
    pki: Pki, which: str, cafile: str | None, reason: str
) -> None:
    async with https_server(getattr(pki, which)) as server:
        store = HttpStore(server.url, cafile=str(pki.ca) if cafile else None)
        try:
            url = server.url
            hint = "another host" if which == "wrong_name" else "store.cafile"
            message = await assert_refused_quickly(
                store, url, "TLS certificate not trusted", reason, hint
            )
            assert message.startswith(f"map server {url}")
            await assert_stream_fails_quickly(store, url, reason)
            assert server.requests == 0  # nothing was sent to it
        finally:
            await store.close()


async def test_plain_http_client_of_an_https_server_is_a_retryable_error(pki: Pki) -> None:
    """Talking http to an https port is not a certificate problem: a StoreError, not a refusal."""
    async with https_server(pki.server) as server:
        store = HttpStore(server.url.replace("https://", "http://"))
        try:
            async with asyncio.timeout(5):
                with pytest.raises(
                    StoreError, match="closed the connection before answering"
                ) as info:
                    await store.put(ADDR, b"value")
            assert not isinstance(info.value, StoreRefused)
        finally:
            await store.close()


async def test_garbage_and_stalled_handshakes_do_not_hurt_an_https_server(pki: Pki) -> None:
    async with https_server(pki.server) as server:
        noise = random_bytes(20_000, 9)
        stalled = await asyncio.open_connection("127.0.0.1", server.port)  # never says hello
        for i in range(20):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x16\x03\x01" * (i % 2) + noise[i * 1000 : (i + 1) * 1000])
            await writer.drain()
            writer.close()
        store = HttpStore(server.url, cafile=str(pki.ca))
        try:
            async with asyncio.timeout(5):
                await store.put(ADDR, b"still serving")
                assert await store.get(ADDR, 0) == b"still serving"
        finally:
            await store.close()
            stalled[1].close()


async def test_missing_cafile_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"store.cafile .*nope.pem.*cannot load"):
        HttpStore("https://127.0.0.1:1", cafile=str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        server_context(str(tmp_path / "missing.crt"), str(tmp_path / "missing.key"))


async def test_dial_and_listen_over_https_with_the_cafile_setting(pki: Pki) -> None:
    options = Options(extra={"store.linger": 5.0, "store.cafile": str(pki.ca)})
    async with https_server(pki.server) as mapper:
        address = await echo_through_server(
            f"{mapper.url}~stream", options, random_bytes(200_000, 3)
        )
        assert address.startswith(f"{mapper.url}~stream:")


async def test_dial_and_listen_refuse_an_untrusted_https_store_at_once(pki: Pki) -> None:
    options = Options(extra={"store.linger": 1.0})  # no cafile: the system's CAs
    async with https_server(pki.server) as mapper:
        spec = f"{mapper.url}~stream:{format_secret(SECRET)}"
        async with asyncio.timeout(5):
            with pytest.raises(DialError, match="TLS certificate not trusted") as info:
                await keywire.dial(spec, options)
        assert info.value.permanent
        server = keywire.Server([f"{mapper.url}~stream"], options)
        async with asyncio.timeout(5):
            with pytest.raises(Exception, match="TLS certificate not trusted"):
                await server.start()
        await server.close()


def test_map_server_command_serves_https(pki: Pki, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=SRC)
    cli = [sys.executable, "-m", "keywire", "map-server", "--port", "0"]
    bad = subprocess.run(
        [*cli, "--cert", str(pki.server.cert)], capture_output=True, env=env, timeout=20
    )
    assert bad.returncode == 2 and b"--cert and --key go together" in bad.stderr
    bad = subprocess.run(
        [*cli, "--cert", str(tmp_path / "x.crt"), "--key", str(pki.ca)],
        capture_output=True,
        env=env,
        timeout=20,
    )
    assert bad.returncode == 2 and b"cannot load the TLS certificate" in bad.stderr
    proc = subprocess.Popen(
        [*cli, "--cert", str(pki.server.cert), "--key", str(pki.server.key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("https://127.0.0.1:")

        async def use() -> None:
            store = HttpStore(url, cafile=str(pki.ca))
            try:
                async with asyncio.timeout(10):
                    await store.put(ADDR, b"over https")
                    assert await store.get(ADDR, 0) == b"over https"
            finally:
                await store.close()

        asyncio.run(use())
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# -- rediss --------------------------------------------------------------------------------------
async def test_8mb_each_way_over_rediss(tls_redis: RedisProcess, pki: Pki) -> None:
    assert tls_redis.url.startswith("rediss://")
    a = RedisStore(tls_redis.url, cafile=str(pki.ca))
    b = RedisStore(tls_redis.url, cafile=str(pki.ca))
    try:
        async with asyncio.timeout(10):  # the long-poll path works over TLS too
            waiting = asyncio.ensure_future(b.get(ADDR, 5))
            await asyncio.sleep(0.2)
            await a.put(ADDR, b"over rediss")
            assert await waiting == b"over rediss"
        await exchange(a, b, StoreParams(window=16, value_size=65536, **FAST), MB8, 30)
    finally:
        await a.close()
        await b.close()


async def test_untrusted_rediss_certificate_fails_clearly(
    tls_redis: RedisProcess, pki: Pki, tmp_path: Path
) -> None:
    url = tls_redis.url
    shown = f"redis {url}"
    # the system trust store does not know the test CA
    store = RedisStore(url)
    try:
        await assert_refused_quickly(store, shown, "TLS certificate not trusted")
        await assert_stream_fails_quickly(store, shown, "not trusted")
    finally:
        await store.close()
    # a CA that did not sign the server's certificate
    other = RedisStore(url, cafile=str(pki.other_ca.cert))
    try:
        await assert_refused_quickly(other, shown, "TLS certificate not trusted")
    finally:
        await other.close()


async def test_rediss_checks_the_host_name(tmp_path: Path, pki: Pki) -> None:
    server = RedisProcess(tmp_path, persistent=False, tls=pki.wrong_name, ca=pki.ca)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _start_ignoring_name, server)
    store = RedisStore(server.url, cafile=str(pki.ca))
    try:
        await assert_refused_quickly(store, "TLS certificate not trusted", "mismatch")
    finally:
        await store.close()
        await loop.run_in_executor(None, server.stop)


def _start_ignoring_name(server: RedisProcess) -> None:
    """``start`` checks readiness with host-name verification; this server's name is wrong on
    purpose, so wait for it without that check."""
    import socket
    import ssl
    import time

    assert server.tls is not None and server.ca is not None
    args = [
        "redis-server",
        "--port",
        "0",
        "--tls-port",
        str(server.port),
        "--tls-cert-file",
        str(server.tls.cert),
        "--tls-key-file",
        str(server.tls.key),
        "--tls-ca-cert-file",
        str(server.ca),
        "--tls-auth-clients",
        "no",
        "--bind",
        "127.0.0.1",
        "--dir",
        str(server.directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--logfile",
        "",
    ]
    server.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(cafile=str(server.ca))
    context.check_hostname = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as raw,
                context.wrap_socket(raw) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


async def test_dial_over_rediss_uses_the_cafile_setting(tls_redis: RedisProcess, pki: Pki) -> None:
    spec = f"{tls_redis.url}~stream:{format_secret(SECRET)}"
    async with asyncio.timeout(5):
        with pytest.raises(DialError, match="TLS certificate not trusted"):
            await keywire.dial(spec, Options(extra={"store.linger": 1.0}))
    options = Options(extra={"store.linger": 5.0, "store.cafile": str(pki.ca)})
    async with keywire.Server([spec], options) as server:
        conn = await keywire.dial(spec, options)
        try:
            async with asyncio.timeout(15):
                stream = await conn.open_stream()
                await stream.write(b"through rediss")
                await stream.close_write()
                accepted = await server.accept()
                peer = await accepted.accept_stream()
                assert await peer.read_all() == b"through rediss"
                await accepted.abort()
        finally:
            await conn.abort()
