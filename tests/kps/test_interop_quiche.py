"""Live interop with quiche (npm ``@infisical/quic`` 1.0.8), the QUIC stack of KPS's JS packages.

The peer is tests/interop/npm/quiche_peer.js, configured as KPS's JS packages configure quiche:
ALPN h3, ``enableDgram [true, 1000, 1000]``, the client pinning sha256(leaf DER) in the
library's custom verification callback. Both directions: keywire dials quiche, quiche dials
keywire; both pins reject the wrong certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import qh3.tls

from keywire.errors import DatagramTooLarge, PinMismatch
from keywire.identity import Identity
from keywire.kps import KpsConnection, KpsSettings, dial

from ..node_events import NodeEventLog
from .helpers import echo_handler, echo_stream, listening

pytestmark = pytest.mark.timeout(30)

NPM_DIR = Path(__file__).resolve().parents[1] / "interop" / "npm"
PEER = NPM_DIR / "quiche_peer.js"
#: quiche's default max_udp_payload_size (``quiche.MAX_DATAGRAM_SIZE``), which it advertises
QUICHE_UDP_PAYLOAD = 1350
#: keywire's worst-case packet overhead around a DATAGRAM frame (docs/kps.md)
KEYWIRE_DATAGRAM_OVERHEAD = 44


def node() -> str:
    """The node binary; fails (not skips) when the npm harness is not installed."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed: the quiche interop test needs Node >= 18")
    if not (NPM_DIR / "node_modules" / "@infisical" / "quic-linux-x64").is_dir():
        pytest.fail(f"@infisical/quic missing: run `npm ci --prefix {NPM_DIR}`")
    return found


def window(index: int, size: int, count: int) -> bytes:
    """Stream ``index``'s payload: the peer script's SHAKE128 bytes ``[index, index + size)``."""
    return hashlib.shake_128(b"keywire-interop").digest(size + count)[index : index + size]


def write_identity(identity: Identity, folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(identity.certificate_pem)
    key.write_bytes(identity.private_key_pem)
    return cert, key


class QuicheServer(NodeEventLog):
    """A running ``quiche_peer.js server``: its port and the JSON events it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        super().__init__(proc)
        self.port = port


@contextlib.asynccontextmanager
async def quiche_server(identity: Identity, folder: Path) -> AsyncIterator[QuicheServer]:
    cert, key = write_identity(identity, folder)
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(PEER),
        "server",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--lifetime",
        "30",
        cwd=NPM_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    server: QuicheServer | None = None
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        if not line.strip().isdigit():
            errors = await asyncio.wait_for(proc.stderr.read(), 2)
            pytest.fail(f"quiche_peer server did not start: {line!r} {errors.decode()[-2000:]}")
        server = QuicheServer(proc, int(line))
        yield server
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the peer stops when stdin closes
        try:
            await asyncio.wait_for(proc.wait(), 3)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if server is not None:
            await asyncio.wait_for(server._reader, 2)


async def quiche_client(
    port: int, digest: bytes, *, streams: int, size: int, datagram: str, timeout: float = 15
) -> tuple[int, dict[str, Any]]:
    """Run ``quiche_peer.js client`` against 127.0.0.1:port; its exit code and JSON result."""
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(PEER),
        "client",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--sha256",
        digest.hex(),
        "--streams",
        str(streams),
        "--size",
        str(size),
        "--datagram",
        datagram,
        "--timeout",
        str(timeout),
        cwd=NPM_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().strip().splitlines()
    assert lines, f"quiche_peer client printed nothing; stderr: {err.decode()[-2000:]}"
    assert proc.returncode is not None
    return proc.returncode, json.loads(lines[-1])


@pytest.fixture
def client_hellos(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every ClientHello keywire's listener parses (to see the SNI quiche sends)."""
    seen: list[Any] = []
    original = qh3.tls.pull_client_hello

    def pull(buf: Any) -> Any:
        hello = original(buf)
        seen.append(hello)
        return hello

    monkeypatch.setattr(qh3.tls, "pull_client_hello", pull)
    yield seen


async def datagram_round_trip(conn: KpsConnection, data: bytes) -> bytes:
    """Send ``data`` every 100 ms until it comes back (datagrams may be lost; a late echo of
    an earlier round's resend is skipped)."""
    for _ in range(30):
        conn.send_datagram(data)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                while (got := await conn.receive_datagram()) != data:
                    pass
                return got
    return b""


async def test_keywire_dials_the_quiche_server(tmp_path: Path) -> None:
    identity = Identity.generate()
    async with quiche_server(identity, tmp_path) as server:
        conn = await dial("127.0.0.1", server.port, identity.certhash, KpsSettings())
        try:
            count, size = 8, 1_000_000
            payloads = [window(i, size, count) for i in range(count)]
            streams = [await conn.open_stream() for _ in range(count)]

            async def echo(index: int) -> tuple[bytes, bytes]:
                await streams[index].write(payloads[index])
                await streams[index].close_write()
                got = await streams[index].read_all()
                return got, await streams[index].read()  # after FIN: EOF again

            results = await asyncio.wait_for(asyncio.gather(*(echo(i) for i in range(count))), 20)
            for (got, after), sent in zip(results, payloads, strict=True):
                assert len(got) == size and got == sent
                assert after == b""

            # quiche advertises max_udp_payload_size 1350; qh3's path-MTU probing stays
            # within it, so keywire's limit rises from 1236 (1280-byte packets) to 1306
            async with asyncio.timeout(3):
                while conn.max_datagram_size != QUICHE_UDP_PAYLOAD - KEYWIRE_DATAGRAM_OVERHEAD:
                    await asyncio.sleep(0.05)
            limit = conn.max_datagram_size
            assert await datagram_round_trip(conn, b"datagram from keywire") == (
                b"datagram from keywire"
            )
            largest = bytes(range(256)) * (limit // 256) + b"z" * (limit % 256)
            assert await datagram_round_trip(conn, largest) == largest
            with pytest.raises(DatagramTooLarge):
                conn.send_datagram(largest + b"!")
        finally:
            await conn.close()
        (connected,) = await server.wait_events("connection")
        assert connected["sni"] is None  # keywire sends no SNI for an IP literal
        assert connected["alpn"] == "h3"
        assert connected["dgram_max_writable"] == QUICHE_UDP_PAYLOAD - 32
        echoed = await server.wait_events("stream-echoed", 8)
        assert sorted(e["bytes"] for e in echoed) == [1_000_000] * 8
        assert not server.of("datagram-echo-failed")


async def test_keywire_pin_rejects_a_quiche_server_with_another_certificate(tmp_path: Path) -> None:
    identity, wrong = Identity.generate(), Identity.generate()
    async with quiche_server(identity, tmp_path) as server:
        with pytest.raises(PinMismatch) as info:
            await dial("127.0.0.1", server.port, wrong.certhash, KpsSettings())
        assert info.value.actual == identity.certhash
        # keywire aborted inside the handshake (before its Finished) and said why:
        # CONNECTION_CLOSE with CRYPTO_ERROR 0x100 + bad_certificate(42)
        (failed, *_) = await server.wait_events("connection-error")
        assert failed["code"] == 0x12A and failed["type"] == "ErrorQUICConnectionPeerTLS"
        # quiche never got an established connection, let alone data
        assert not server.of("connection") and not server.of("stream-echoed")


async def test_quiche_client_dials_keywire(client_hellos: list[Any]) -> None:
    limits: list[tuple[int, int | None]] = []
    tasks: set[asyncio.Future[None]] = set()

    async def echo_recording_limits(conn: KpsConnection) -> None:
        """Echo streams and datagrams; note keywire's datagram limit when one arrives."""

        async def streams() -> None:
            with contextlib.suppress(Exception):  # ends with the connection
                async for stream in conn:
                    tasks.add(asyncio.ensure_future(echo_stream(stream)))  # type: ignore[arg-type]

        async def datagrams() -> None:
            with contextlib.suppress(Exception):
                while True:
                    data = await conn.receive_datagram()
                    limits.append((len(data), conn.max_datagram_size))
                    conn.send_datagram(data)

        tasks.update({asyncio.ensure_future(streams()), asyncio.ensure_future(datagrams())})

    async with listening(echo_recording_limits) as listener:
        code, result = await quiche_client(
            listener.port,
            listener.identity.cert_digest,
            streams=4,
            size=300_000,
            datagram="from quiche",
        )
    for task in tasks:
        task.cancel()
    assert code == 0, result
    assert result["ok"] and result["streams_ok"] == 4 and result["datagram_ok"]
    assert result["alpn"] == "h3"
    assert bytes.fromhex(result["presented_sha256"]) == listener.identity.cert_digest
    # quiche may send keywire datagrams of up to 1318 bytes (its 1350-byte packets less the
    # overhead with keywire's 8-byte connection ids); keywire's listener does not probe the
    # path MTU, so towards quiche it stays at 1236 (1280-byte packets)
    assert result["dgram_max_writable"] == QUICHE_UDP_PAYLOAD - 32
    assert limits[0] == (len("from quiche"), 1280 - KEYWIRE_DATAGRAM_OVERHEAD)
    # @infisical/quic passes the host as serverName, and quiche sends it as SNI even for an IP
    # literal (RFC 6066 forbids that; KPS's Go client sends none, Rust sends "localhost")
    assert [hello.server_name for hello in client_hellos] == ["127.0.0.1"]
    assert client_hellos[0].alpn_protocols == ["h3"]


async def test_quiche_client_with_a_wrong_hash_fails_and_the_listener_keeps_serving() -> None:
    accepted: list[KpsConnection] = []

    async def recording_echo(conn: KpsConnection) -> None:
        accepted.append(conn)
        await echo_handler(conn)

    async with listening(recording_echo) as listener:
        wrong = Identity.generate().cert_digest
        code, result = await quiche_client(
            listener.port, wrong, streams=1, size=1000, datagram="x", timeout=5
        )
        assert code == 1 and not result["ok"] and not result["handshake"]
        assert "custom TLS verification" in result["error"]
        assert bytes.fromhex(result["presented_sha256"]) == listener.identity.cert_digest

        # quiche's custom check runs once its TLS handshake is done (its Finished is sent), so
        # keywire saw a complete handshake; the client then closed with CRYPTO_ERROR
        # bad_certificate without opening a stream
        (bad,) = accepted
        closed = await asyncio.wait_for(bad.wait_closed(), 5)
        assert closed.remote and "0x12a" in str(closed)  # CRYPTO_ERROR bad_certificate
        await asyncio.sleep(0.05)
        assert bad not in listener.connections  # released, not kept (with the port) for ever

        code, result = await quiche_client(
            listener.port, listener.identity.cert_digest, streams=2, size=50_000, datagram="again"
        )
        assert code == 0 and result["ok"], result
        assert len(accepted) == 2
