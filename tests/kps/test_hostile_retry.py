"""A flood of spoofable QUIC Initials against a KPS listener process (issue 18, item 6).

The flood comes from another process: decryptable client Initials (a real ClientHello, each
re-encrypted under a fresh destination id) sent at a fixed rate from 64 UDP sockets bound to
127.0.1.x that never read, so every Retry or server flight goes nowhere, as it would for spoofed
sources. The listener must keep serving a legitimate dialer (1 MiB echoed byte-exact during and
after the flood), create no state for the flood (Retry), and return near its baseline RSS.

Run by hand for figures: ``python tests/kps/test_hostile_retry.py flood HOST PORT RATE SECONDS``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from keywire.kps import KpsSettings, dial
from keywire.kps.quic.retry import RetryTokens, TokenError
from keywire.kps.quic.router import Action, QuicRouter

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]

#: the listener process: echo on every stream, ``stats`` on stdin answers a JSON line
SERVER = """
import asyncio, contextlib, json, sys
from keywire.identity import Identity
from keywire.kps import KpsListener, KpsSettings

async def echo(conn):
    async def one(stream):
        with contextlib.suppress(Exception):
            while data := await stream.read(65536):
                await stream.write(data)
            await stream.close_write()
    tasks = set()
    async for stream in conn:
        task = asyncio.ensure_future(one(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

async def main():
    options = json.loads(sys.argv[1])
    no_retry = options.get("retry_threshold", 0) < 0
    if no_retry:
        del options["retry_threshold"]
    listener = KpsListener(Identity.generate(), KpsSettings(**options), echo)
    if no_retry:
        listener.router.tokens = None
    await listener.start("127.0.0.1", 0)
    print(json.dumps({"port": listener.port, "certhash": listener.identity.certhash}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        r = listener.router
        print(json.dumps({"rss": rss(), "connections": len(r),
                          "handshakes": r.handshakes_in_flight, "retries": r.retries,
                          "validated": r.validated, "bad_tokens": r.bad_tokens,
                          "refused": listener.refused,
                          "committed": listener.budget.committed,
                          "unread": sum(c.session.unread for c in listener.connections),
                          "reclaims": listener.reclaimer.runs}), flush=True)

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- the flood ------------------------------------------------------------------------------------
def initial_template() -> tuple[bytes, bytes, int, bytes]:
    """A real client Initial (aioquic, ALPN h3): its plaintext header, payload, dcid length and
    what follows the packet in its datagram (the padding up to 1200 bytes)."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.crypto import CryptoPair

    client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"]))
    client.connect(("127.0.0.1", 9), now=time.monotonic())
    datagram = client.datagrams_to_send(now=time.monotonic())[0][0]
    dcid_len = datagram[5]
    dcid = datagram[6 : 6 + dcid_len]
    scid_len = datagram[6 + dcid_len]
    offset = 7 + dcid_len + scid_len + 1  # token length 0 (one byte)
    length_size = 1 << (datagram[offset] >> 6)
    length = int.from_bytes(datagram[offset : offset + length_size], "big") & ~(
        0xC0 << (8 * (length_size - 1))
    )
    encrypted_offset = offset + length_size
    end = encrypted_offset + length
    pair = CryptoPair()
    pair.setup_initial(dcid, is_client=False, version=1)
    header, payload, _ = pair.decrypt_packet(datagram[:end], encrypted_offset, 0)
    return header, payload, dcid_len, datagram[end:]


def fresh_initial(header: bytes, payload: bytes, dcid_len: int, tail: bytes) -> bytes:
    """The template re-encrypted under a new random destination id (so a new connection)."""
    from aioquic.quic.crypto import CryptoPair

    dcid = os.urandom(dcid_len)
    plain = header[:6] + dcid + header[6 + dcid_len :]
    pair = CryptoPair()
    pair.setup_initial(dcid, is_client=True, version=1)
    return pair.encrypt_packet(plain, payload, 0) + tail


def flood(host: str, port: int, rate: int, seconds: float, sources: int = 64) -> int:
    """Send ``rate`` Initials per second for ``seconds`` from ``sources`` silent sockets."""
    header, payload, dcid_len, tail = initial_template()
    socks = []
    for i in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.1.{i + 1}", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        socks.append(sock)
    sent = 0
    print("flooding", flush=True)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            socks[sent % sources].sendto(
                fresh_initial(header, payload, dcid_len, tail), (host, port)
            )
            sent += 1
        time.sleep(0.005)
    for sock in socks:
        sock.close()
    return sent


# -- the test -------------------------------------------------------------------------------------
class ServerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, certhash: str) -> None:
        self.proc = proc
        self.port = port
        self.certhash = certhash

    async def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        result: dict[str, Any] = json.loads(line)
        return result


async def start_server(**options: int) -> ServerProcess:
    """The listener process; ``options``: retry_threshold (-1: no Retry), receive_budget."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER,
        json.dumps(options),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None
    hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
    return ServerProcess(proc, hello["port"], hello["certhash"])


async def echo_1mib(server: ServerProcess, timeout: float = 15.0) -> float:
    """Dial, echo 1 MiB byte-exact, close; returns the dial time."""
    payload = os.urandom(1 << 20)
    async with asyncio.timeout(timeout):
        started = time.monotonic()
        conn = await dial("127.0.0.1", server.port, server.certhash, KpsSettings())
        dialled = time.monotonic() - started
        stream = await conn.open_stream()

        async def send() -> None:
            await stream.write(payload)
            await stream.close_write()

        writer = asyncio.ensure_future(send())
        received = bytearray()
        while chunk := await stream.read():
            received += chunk
        await writer
        await conn.close()
    assert bytes(received) == payload
    return dialled


async def run_flood(port: int, rate: int, seconds: float) -> asyncio.subprocess.Process:
    """Start the flood process; returns once it is sending."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "flood",
        "127.0.0.1",
        str(port),
        str(rate),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"flooding\n"
    return proc


async def test_initial_flood_gets_retries_and_a_real_dial_still_echoes_1mib() -> None:
    server = await start_server(retry_threshold=16)
    try:
        await echo_1mib(server)
        baseline = await server.stats()
        flooder = await run_flood(server.port, rate=1000, seconds=4.0)
        await asyncio.sleep(0.5)
        during = await echo_1mib(server)
        validated_during = (await server.stats())["validated"]
        out, err = await asyncio.wait_for(flooder.communicate(), 30)
        assert flooder.returncode == 0, err.decode()
        sent = int(out.split()[0])
        after_flood = await server.stats()
        await echo_1mib(server)
        # half-open handshakes admitted below the threshold end at kps.handshake_timeout (5 s)
        deadline = time.monotonic() + KpsSettings().handshake_timeout + 3
        while (settled := await server.stats())["handshakes"] and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    finally:
        server.proc.terminate()
        _, stderr = await asyncio.wait_for(server.proc.communicate(), 10)
    print(
        f"sent={sent} dial_during={during * 1000:.1f}ms baseline={baseline} "
        f"after_flood={after_flood} settled={settled}"
    )
    assert sent >= 3500
    # nearly every flood Initial got a stateless Retry; at most the threshold ever held state
    assert after_flood["retries"] >= 0.9 * sent
    assert after_flood["refused"] == 0
    # the real dialer was asked to validate its address during the flood, and did
    assert validated_during >= 1
    assert settled["handshakes"] == 0 and settled["connections"] == 0
    assert settled["rss"] - baseline["rss"] < 24 << 20, (baseline, settled)
    assert len(stderr) < 2000, stderr[-2000:]


async def test_retry_interoperates_with_aioquic_and_keywire_dialers() -> None:
    """With Retry always on, an independent stack (aioquic, which checks the Retry integrity
    tag and the ids in our transport parameters) and keywire's dialer both connect and echo."""
    import ssl

    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    from .helpers import listening
    from .test_interop_aioquic import RecordingProtocol

    async with listening(retry_threshold=0) as listener, asyncio.timeout(30):
        assert listener.router.retry_threshold == 0  # kps.retry_threshold reaches the router
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE)
        async with connect(
            "127.0.0.1", listener.port, configuration=config, create_protocol=RecordingProtocol
        ) as client:
            assert isinstance(client, RecordingProtocol)
            quic = client._quic
            stream_id = quic.get_next_available_stream_id()
            payload = os.urandom(300_000)
            client.finished[stream_id] = asyncio.Event()
            quic.send_stream_data(stream_id, payload, end_stream=True)
            client.transmit()
            await client.finished[stream_id].wait()
            assert bytes(client.streams[stream_id]) == payload
        assert listener.router.retries >= 1 and listener.router.validated == 1
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        stream = await conn.open_stream()
        await stream.write(payload)
        await stream.close_write()
        assert await stream.read_all() == payload
        await conn.close()
        assert listener.router.validated == 2


# -- the sans-IO parts ----------------------------------------------------------------------------
ADDR = ("127.0.0.1", 4433)


def test_a_token_is_valid_only_for_its_address_id_and_lifetime() -> None:
    tokens = RetryTokens(lifetime=10.0)
    token = tokens.mint(ADDR, b"odcid-01", b"rscid-01", now=100.0)
    checked = tokens.validate(token, ADDR, b"rscid-01", now=101.0)
    assert (checked.original_dcid, checked.retry_scid) == (b"odcid-01", b"rscid-01")
    bad = [
        (token, ("127.0.0.2", 4433), b"rscid-01", 101.0),  # another address
        (token, ("127.0.0.1", 4434), b"rscid-01", 101.0),  # another port
        (token, ADDR, b"rscid-02", 101.0),  # another Retry id
        (token, ADDR, b"rscid-01", 111.0),  # expired
        (token[:-1] + bytes([token[-1] ^ 1]), ADDR, b"rscid-01", 101.0),  # forged MAC
        (token[:5], ADDR, b"rscid-01", 101.0),  # truncated
        (b"\x02" + token[1:], ADDR, b"rscid-01", 101.0),  # unknown format
    ]
    for args in bad:
        with pytest.raises(TokenError):
            tokens.validate(*args)
    # another process (another key) does not accept it
    with pytest.raises(TokenError):
        RetryTokens().validate(token, ADDR, b"rscid-01", now=101.0)


def test_the_router_retries_over_the_threshold_and_admits_a_valid_token() -> None:
    header, payload, dcid_len, tail = initial_template()
    router = QuicRouter(cid_length=8, max_connections=10, tokens=RetryTokens(), retry_threshold=1)
    first = fresh_initial(header, payload, dcid_len, tail)
    assert router.classify(first, ADDR, 1.0).action is Action.ACCEPT  # below the threshold
    router.handshake_started(object())
    retry = router.classify(fresh_initial(header, payload, dcid_len, tail), ADDR, 1.0)
    assert retry.action is Action.REPLY and router.retries == 1
    assert len(retry.reply) < 200  # far smaller than the 1200-byte Initial: no amplification
    # a forged token is dropped, never admitted and never retried again
    forged = RetryTokens().mint(ADDR, b"x" * 8, b"y" * 8, now=1.0)
    assert (
        router.classify(with_token(header, payload, forged, tail), ADDR, 1.0).action is Action.DROP
    )
    assert router.bad_tokens == 1 and router.retries == 1


def with_token(header: bytes, payload: bytes, token: bytes, tail: bytes) -> bytes:
    """The template Initial sent to a new id with ``token`` (the length field re-encoded)."""
    from aioquic.quic.crypto import CryptoPair

    dcid_len = header[5]
    dcid = os.urandom(dcid_len)
    scid_end = 7 + dcid_len + header[6 + dcid_len]
    pn_len = (header[0] & 0x03) + 1
    length = pn_len + len(payload) + 16
    plain = (
        header[:6]
        + dcid
        + header[6 + dcid_len : scid_end]
        + bytes([len(token)])
        + token
        + (0x4000 | length).to_bytes(2, "big")
        + header[-pn_len:]
    )
    pair = CryptoPair()
    pair.setup_initial(dcid, is_client=True, version=1)
    return pair.encrypt_packet(plain, payload, 0) + tail


def _main(argv: list[str]) -> None:
    if argv[:1] == ["flood"]:
        sent = flood(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
        print(sent, flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
