"""KPS over QUIC: throughput, handshake latency, many streams, datagrams — as ratios.

Every figure is measured in the same run as its reference:

* one stream of ``--size-mb`` MB, client → server, over keywire ``kps:`` vs bare qh3 with the
  same settings (ALPN h3, pinned by ``assert_fingerprint``, the same windows and packet size,
  backpressure on ``get_send_buffer_size``), twice: a minimal driver of ``QuicConnection`` on
  qh3's batched UDP transport (what keywire's shell adds) and qh3's own asyncio
  ``serve``/``connect`` (what an application using qh3 directly gets); and raw TCP;
* handshake p50/p99 over ``--connects`` sequential dials, keywire vs bare qh3;
* ``--streams`` concurrent request/response streams (100 B each way) on one connection;
* datagrams per second at 1,000 bytes (``--datagrams`` sent as fast as the sender can);
* against iroh (``--iroh``; issue 17), the QUIC dial-by-key a Python user would pick instead:
  one-stream throughput, connect p50/p99 (dial until the first stream is usable), ``close()``
  time with the default arguments, aggregate throughput of 1, 4 and 16 concurrent streams on
  one connection, and the listener's RSS per idle connection, each for keywire and iroh;
  ``--only-connect`` measures just connect p50 and CPU per dial, kps and iroh alternating round
  by round against servers started together (the ratio is taken per round);
  ``--only-streams`` measures keywire's own 1 → 4 → 16 stream curve, the counts alternated
  on fresh connections to one server ``--rounds`` times (a load change hits all three alike).

iroh is optional: ``.venv/bin/pip install -r bench/requirements-iroh.txt``. Its uniffi binding
(``iroh_ffi._UniffiRustBufferBuilder.write``) copies every byte of a ``write`` into the Rust
buffer in a Python ``for`` loop (~6 MB/s, CPU-bound in the interpreter, whatever iroh does);
the bench replaces that one method at run time with a single ``ctypes.memmove`` of the whole
value into the same buffer (same reserve, same length bookkeeping), which is what the loop
computes. Nothing else of iroh is touched, so the figure is iroh's own QUIC (quinn) plus the
binding's remaining per-call costs: the fair anchor. ``KEYWIRE_LOOP=uvloop`` (or ``--uvloop``)
runs every process of the bench on uvloop (``pip install uvloop``; not a keywire extra, see
docs/performance.md "QUIC at native speed").

Servers run in a child process (``--serve MODE``) so client and server do not share one
event loop. Sizes are modest by default; the issue's sizes are
``--size-mb 256 --connects 200 --streams 1000 --datagrams 50000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qh3._hazmat import pull_quic_header
from qh3.asyncio import QuicConnectionProtocol, connect, serve
from qh3.asyncio._transport import create_optimized_datagram_transport
from qh3.quic import events as qe
from qh3.quic.connection import QuicConnection

from keywire.identity import Identity
from keywire.kps import KpsConnection, KpsListener, KpsSettings, dial
from keywire.kps.quic import client_configuration, server_configuration

CHUNK = 64 << 10
SETTINGS = KpsSettings()
IROH_ALPN = b"keywire-bench"


# -- iroh (optional reference) --------------------------------------------------------------------
def load_iroh() -> Any:
    """Import iroh and replace its byte-by-byte copy into Rust buffers with one memmove.

    uniffi's generated ``_UniffiRustBufferBuilder.write(value)`` reserves ``len(value)`` bytes
    and then assigns them one at a time (``for i, byte in enumerate(value): data[len + i] =
    byte``), so every ``SendStream.write_all`` costs a Python loop iteration per byte. The
    replacement reserves the same way and copies the same bytes to the same place with
    ``ctypes.memmove``; the buffer, its length and everything the Rust side sees are identical.
    """
    import ctypes

    import iroh
    from iroh import iroh_ffi

    builder = iroh_ffi._UniffiRustBufferBuilder

    def write(self: Any, value: bytes) -> None:
        size = len(value)
        with self._reserve(size):
            base = ctypes.cast(self.rbuf.data, ctypes.c_void_p).value
            assert base is not None
            ctypes.memmove(base + self.rbuf.len, bytes(value), size)

    setattr(builder, "write", write)  # noqa: B010 (a method replaced on the class)
    return iroh


async def iroh_endpoint(iroh: Any) -> Any:
    """A loopback-only iroh endpoint: no relays, no discovery (the ``minimal`` preset)."""
    options = iroh.EndpointOptions(
        preset=iroh.preset_minimal(),
        bind_addr="127.0.0.1:0",
        alpns=[IROH_ALPN],
        relay_mode=iroh.RelayMode.disabled(),
    )
    return await iroh.Endpoint.bind(options)


async def run_iroh_server() -> None:
    """Counts each stream's bytes and answers the total on FIN, like ``_kps_sink``."""
    iroh = load_iroh()
    endpoint = await iroh_endpoint(iroh)
    tasks: set[asyncio.Future[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def one(bi: Any) -> None:
        with contextlib.suppress(Exception):
            recv, send = bi.recv(), bi.send()
            total = 0
            while chunk := await recv.read(1 << 20):
                total += len(chunk)
            await send.write_all(str(total).encode())
            await send.finish()

    async def serve(conn: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                spawn(one(await conn.accept_bi()))

    async def accept() -> None:
        while (incoming := await endpoint.accept_next()) is not None:
            with contextlib.suppress(Exception):
                spawn(serve(await (await incoming.accept()).connect()))

    spawn(accept())
    port = endpoint.addr().direct_addresses()[0].rsplit(":", 1)[1]
    print(port, str(endpoint.id()), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# -- servers (child process) ----------------------------------------------------------------------
async def _kps_sink(conn: KpsConnection) -> None:
    async def one(stream: Any) -> None:
        with contextlib.suppress(Exception):
            total = 0
            first = await stream.read(1)
            if first == b"E":  # echo mode: request/response streams
                data = await stream.read_all()
                await stream.write(data)
                await stream.close_write()
                return
            total += len(first)
            while chunk := await stream.read():
                total += len(chunk)
            await stream.write(str(total).encode())
            await stream.close_write()

    async def datagrams() -> None:
        with contextlib.suppress(Exception):
            count = 0
            while True:
                data = await conn.receive_datagram()
                count += 1
                if data.startswith(b"COUNT"):
                    stream = await conn.open_stream()
                    await stream.write(str(count - 1).encode())
                    await stream.close_write()

    tasks = {asyncio.ensure_future(datagrams())}
    async for stream in conn:
        task = asyncio.ensure_future(one(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


class BareServer(QuicConnectionProtocol):
    """Bare qh3: counts stream bytes and answers the total on FIN."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.totals: dict[int, int] = {}

    def quic_event_received(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.StreamDataReceived):
            total = self.totals.get(event.stream_id, 0) + len(event.data)
            self.totals[event.stream_id] = total
            if event.end_stream:
                self._quic.send_stream_data(event.stream_id, str(total).encode(), True)
                self.transmit()


class MinimalDriver(asyncio.DatagramProtocol):
    """The least code that drives a qh3 ``QuicConnection`` on qh3's batched UDP transport.

    One connection per socket, no streams API: the reference for what keywire's shell costs
    on identical I/O (server: counts bytes and answers the total on FIN; client: sends).
    """

    def __init__(self, config: Any, remote: Any = None) -> None:
        self.config = config
        self.quic: QuicConnection | None = None
        self.transport: Any = None
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.remote = remote
        self.totals: dict[int, int] = {}
        self.sent = asyncio.Event()
        self.reply = bytearray()
        self.done = asyncio.Event()
        self.connected = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def start_client(self) -> None:
        self.quic = QuicConnection(configuration=self.config)
        self.quic.connect(self.remote, self.loop.time())
        self.flush()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams_received([data], addr)

    def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        if self.quic is None:
            dcid = pull_quic_header(datagrams[0], 0, 8)[3]
            self.quic = QuicConnection(
                configuration=self.config, original_destination_connection_id=dcid
            )
            self.remote = addr
        self.quic.receive_many_datagrams(datagrams, addr, self.loop.time())
        self.handle_events()
        self.flush()

    def handle_events(self) -> None:
        assert self.quic is not None
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, qe.HandshakeCompleted):
                self.connected.set()
            elif isinstance(event, qe.StreamDataReceived):
                if self.config.is_client:
                    self.reply.extend(event.data)
                    if event.end_stream:
                        self.done.set()
                    continue
                total = self.totals.get(event.stream_id, 0) + len(event.data)
                self.totals[event.stream_id] = total
                if event.end_stream:
                    self.quic.send_stream_data(event.stream_id, str(total).encode(), True)

    def on_timer(self) -> None:
        self.timer = None
        assert self.quic is not None
        self.quic.handle_timer(self.loop.time())
        self.handle_events()
        self.flush()

    def flush(self) -> None:
        assert self.quic is not None
        out = [data for data, _ in self.quic.datagrams_to_send(self.loop.time())]
        if out:
            self.transport.sendto_many(out, self.remote)
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.quic.get_timer()
        self.timer = None if deadline is None else self.loop.call_at(deadline, self.on_timer)
        self.sent.set()


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def run_server(mode: str, key: str) -> None:
    if mode == "iroh":
        await run_iroh_server()
        return
    identity = Identity.load(key)
    if mode == "kps":
        listener = KpsListener(identity, SETTINGS, _kps_sink)
        await listener.start("127.0.0.1", 0)
        port = listener.port
    elif mode == "minimal":
        loop = asyncio.get_running_loop()
        sock = _udp_socket()
        port = sock.getsockname()[1]
        await create_optimized_datagram_transport(
            loop, lambda: MinimalDriver(server_configuration(identity, SETTINGS)), sock=sock
        )
    elif mode == "qh3":
        server = await serve(
            "127.0.0.1",
            0,
            configuration=server_configuration(identity, SETTINGS),
            create_protocol=BareServer,
        )
        port = server._transport.get_extra_info("sockname")[1]
    else:

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            total = 0
            while chunk := await reader.read(1 << 20):
                total += len(chunk)
            writer.write(str(total).encode())
            await writer.drain()
            writer.close()

        tcp = await asyncio.start_server(sink, "127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


class Child:
    """A running server process: its UDP/TCP port, iroh's endpoint id, its pid."""

    def __init__(self, line: str, pid: int) -> None:
        fields = line.split()
        self.port = int(fields[0])
        self.node = fields[1] if len(fields) > 1 else ""
        self.pid = pid

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@contextlib.asynccontextmanager
async def child(mode: str, key: str):  # type: ignore[no-untyped-def]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        mode,
        "--key",
        key,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    server = Child((await proc.stdout.readline()).decode(), proc.pid)
    try:
        yield server
    finally:
        proc.stdin.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 3)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- clients -------------------------------------------------------------------------------------
class BareClient(QuicConnectionProtocol):
    """Bare qh3 client: wakes the sender after each transmit; collects the reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = asyncio.Event()
        self.reply = bytearray()
        self.done = asyncio.Event()

    def transmit(self) -> None:
        super().transmit()
        self.sent.set()

    def quic_event_received(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.StreamDataReceived):
            self.reply.extend(event.data)
            if event.end_stream:
                self.done.set()


def bare_client_config(identity: Identity) -> Any:
    return client_configuration(identity.cert_digest, SETTINGS)


async def throughput_kps(port: int, identity: Identity, payload: bytes) -> float:
    conn = await dial("127.0.0.1", port, identity.certhash, SETTINGS)
    stream = await conn.open_stream()
    started = time.perf_counter()
    view = memoryview(payload)
    for offset in range(0, len(payload), CHUNK):
        await stream.write(view[offset : offset + CHUNK])
    await stream.close_write()
    reply = await stream.read_all()
    elapsed = time.perf_counter() - started
    assert int(reply) == len(payload), reply
    await conn.close()
    return len(payload) / elapsed / 1e6


async def throughput_qh3(port: int, identity: Identity, payload: bytes) -> float:
    limit = SETTINGS.send_buffer
    async with connect(
        "127.0.0.1", port, configuration=bare_client_config(identity), create_protocol=BareClient
    ) as client:
        assert isinstance(client, BareClient)
        quic = client._quic
        stream_id = quic.get_next_available_stream_id()
        started = time.perf_counter()
        view = memoryview(payload)
        offset = 0
        while offset < len(payload):
            buffered = quic.get_send_buffer_size(stream_id)
            if buffered > limit // 2:
                client.sent.clear()
                await client.sent.wait()
                continue
            for _ in range(max(1, (limit - buffered) // CHUNK)):
                if offset >= len(payload):
                    break
                quic.send_stream_data(stream_id, view[offset : offset + CHUNK])
                offset += CHUNK
            client.transmit()
            await asyncio.sleep(0)
        quic.send_stream_data(stream_id, b"", end_stream=True)
        client.transmit()
        await client.done.wait()
        elapsed = time.perf_counter() - started
        assert int(client.reply) == len(payload)
    return len(payload) / elapsed / 1e6


async def throughput_minimal(port: int, identity: Identity, payload: bytes) -> float:
    limit = SETTINGS.send_buffer
    loop = asyncio.get_running_loop()
    transport, driver = await create_optimized_datagram_transport(
        loop,
        lambda: MinimalDriver(bare_client_config(identity), ("127.0.0.1", port)),
        sock=_udp_socket(),
    )
    assert isinstance(driver, MinimalDriver)
    driver.start_client()
    await driver.connected.wait()
    quic = driver.quic
    assert quic is not None
    stream_id = quic.get_next_available_stream_id()
    started = time.perf_counter()
    view = memoryview(payload)
    offset = 0
    while offset < len(payload):
        room = limit - quic.get_send_buffer_size(stream_id)
        if room <= 0:
            driver.sent.clear()
            await driver.sent.wait()
            continue
        quic.send_stream_data(stream_id, view[offset : offset + room])
        offset += room
        driver.flush()
        await asyncio.sleep(0)
    quic.send_stream_data(stream_id, b"", end_stream=True)
    driver.flush()
    await driver.done.wait()
    elapsed = time.perf_counter() - started
    assert int(driver.reply) == len(payload)
    quic.close()
    driver.flush()
    transport.close()
    return len(payload) / elapsed / 1e6


async def throughput_tcp(port: int, payload: bytes) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    view = memoryview(payload)
    for offset in range(0, len(payload), CHUNK):
        writer.write(view[offset : offset + CHUNK])
        await writer.drain()
    writer.write_eof()
    reply = await reader.read()
    elapsed = time.perf_counter() - started
    assert int(reply) == len(payload)
    writer.close()
    return len(payload) / elapsed / 1e6


async def handshakes_kps(port: int, identity: Identity, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn = await dial("127.0.0.1", port, identity.certhash, SETTINGS)
        times.append(time.perf_counter() - started)
        await conn.close()  # the default close (issue 17)
    return times


async def handshakes_qh3(port: int, identity: Identity, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with connect("127.0.0.1", port, configuration=bare_client_config(identity)) as c:
            times.append(time.perf_counter() - started)
            c.close()
    return times


async def many_streams(port: int, identity: Identity, count: int) -> float:
    conn = await dial("127.0.0.1", port, identity.certhash, SETTINGS)
    request = b"E" + b"q" * 99

    async def one() -> None:
        stream = await conn.open_stream()
        await stream.write(request)
        await stream.close_write()
        assert await stream.read_all() == request[1:]

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed


async def datagram_rate(port: int, identity: Identity, count: int) -> tuple[float, float]:
    conn = await dial("127.0.0.1", port, identity.certhash, SETTINGS)
    payload = b"d" * 1000
    started = time.perf_counter()
    for i in range(count):
        conn.send_datagram(payload)
        if i % 32 == 31:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.3)
    conn.send_datagram(b"COUNT")
    stream = await asyncio.wait_for(conn.accept_stream(), 5)
    received = int(await stream.read_all())
    await conn.close()
    return count / elapsed, received / count


# -- keywire vs iroh (issue 17) ------------------------------------------------------------------
async def send_kps_streams(conn: KpsConnection, payload: bytes, count: int) -> float:
    """``count`` concurrent streams each carry ``len(payload) // count`` bytes; MB/s overall."""
    share = len(payload) // count
    view = memoryview(payload)[:share]

    async def one() -> None:
        stream = await conn.open_stream()
        for offset in range(0, share, CHUNK):
            await stream.write(view[offset : offset + CHUNK])
        await stream.close_write()
        assert int(await stream.read_all()) == share

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return share * count / (time.perf_counter() - started) / 1e6


async def send_iroh_streams(conn: Any, payload: bytes, count: int) -> float:
    share = len(payload) // count
    view = memoryview(payload)[:share]

    async def one() -> None:
        bi = await conn.open_bi()
        send = bi.send()
        for offset in range(0, share, CHUNK):
            await send.write_all(view[offset : offset + CHUNK])
        await send.finish()
        assert int(await bi.recv().read_to_end(64)) == share

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return share * count / (time.perf_counter() - started) / 1e6


class KpsSide:
    """keywire ``kps:`` as the comparison drives it."""

    name = "kps"

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def dial(self, server: Child) -> KpsConnection:
        return await dial("127.0.0.1", server.port, self.identity.certhash, SETTINGS)

    async def first_stream(self, conn: KpsConnection) -> None:
        await conn.open_stream()

    async def close(self, conn: KpsConnection) -> None:
        await conn.close()

    async def streams(self, conn: KpsConnection, payload: bytes, count: int) -> float:
        return await send_kps_streams(conn, payload, count)

    async def stop(self) -> None:
        pass


class IrohSide:
    """iroh 1.2 (patched copy): one client endpoint, a connection per dial."""

    name = "iroh"

    def __init__(self, iroh: Any) -> None:
        self.iroh = iroh
        self.endpoint: Any = None

    async def dial(self, server: Child) -> Any:
        if self.endpoint is None:
            self.endpoint = await iroh_endpoint(self.iroh)
        node = self.iroh.EndpointId.from_string(server.node)
        addr = self.iroh.EndpointAddr(node, None, [f"127.0.0.1:{server.port}"])
        return await self.endpoint.connect(addr, IROH_ALPN)

    async def first_stream(self, conn: Any) -> None:
        await conn.open_bi()

    async def close(self, conn: Any) -> None:
        conn.close(0, b"")

    async def streams(self, conn: Any, payload: bytes, count: int) -> float:
        return await send_iroh_streams(conn, payload, count)

    async def stop(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
            self.endpoint = None


async def compare(side: Any, key: str, payload: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Every issue-17 figure for one side, each against a fresh server process."""
    out: dict[str, Any] = {}
    mode = "kps" if side.name == "kps" else "iroh"
    async with child(mode, key) as server:
        connects, closes = [], []
        for _ in range(args.connects):
            started = time.perf_counter()
            conn = await side.dial(server)
            await side.first_stream(conn)
            opened = time.perf_counter()
            await side.close(conn)
            closes.append(time.perf_counter() - opened)
            connects.append(opened - started)
        out["connect"], out["close"] = connects, closes
    for count in (1, 4, 16):
        rates, cpu = [], []
        for _ in range(args.rounds):
            async with child(mode, key) as server:
                conn = await side.dial(server)
                started = server.cpu_seconds() + time.process_time()
                rates.append(await side.streams(conn, payload, count))
                used = server.cpu_seconds() + time.process_time() - started
                cpu.append(used / (len(payload) // count * count) * 1e9)
                await side.close(conn)
        out[f"streams{count}"] = statistics.median(rates)
        out[f"cpu{count}"] = statistics.median(cpu)
    out["idle_kb"] = await idle_kb(side, key, args)
    await side.stop()
    return out


async def idle_kb(side: Any, key: str, args: argparse.Namespace) -> float:
    """The listener's RSS growth per idle connection (each with one stream opened).

    ``--idle-warmup`` connections are opened and closed first, so the figure leaves out what
    the first connections allocate once per process (UDP receive buffers, crypto tables)."""
    mode = "kps" if side.name == "kps" else "iroh"
    async with child(mode, key) as server:
        for _ in range(args.idle_warmup):
            conn = await side.dial(server)
            await side.first_stream(conn)
            await side.close(conn)
        await asyncio.sleep(0.3)
        before = server.rss_kb()
        idle = [await side.dial(server) for _ in range(args.idle)]
        for conn in idle:
            await side.first_stream(conn)
        await asyncio.sleep(1.0)
        grown = (server.rss_kb() - before) / args.idle
        for conn in idle:
            await side.close(conn)
    return float(grown)


async def main_idle(identity: Identity, key: str, args: argparse.Namespace) -> None:
    """Only the idle-connection row (issue 17), ``--rounds`` times each, kps then iroh."""
    sides: list[Any] = [KpsSide(identity)]
    with contextlib.suppress(ImportError):
        sides.append(IrohSide(load_iroh()))
    for side in sides:
        figures = [await idle_kb(side, key, args) for _ in range(args.rounds)]
        await side.stop()
        shown = ", ".join(f"{f:.1f}" for f in figures)
        print(f"{side.name}: idle connection, listener RSS KB each of {args.idle}: {shown}")


async def connect_times(side: Any, server: Child, count: int) -> list[float]:
    """``count`` sequential dials until the first stream is usable, each closed by default."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn = await side.dial(server)
        await side.first_stream(conn)
        times.append(time.perf_counter() - started)
        await side.close(conn)
    return times


async def main_connect(identity: Identity, key: str, args: argparse.Namespace) -> None:
    """Only connect p50 (issue 17), kps and iroh alternating round by round against servers
    started together, so both see the same machine load; the ratio is taken per round."""
    sides: list[Any] = [KpsSide(identity)]
    with contextlib.suppress(ImportError):
        sides.append(IrohSide(load_iroh()))
    async with child("kps", key) as kps_server, child("iroh", key) as iroh_server:
        servers = {"kps": kps_server, "iroh": iroh_server}
        for side in sides:  # one-time costs (imports, the iroh endpoint) out of the figures
            await connect_times(side, servers[side.name], 5)
        p50s: dict[str, list[float]] = {side.name: [] for side in sides}
        cpus: dict[str, list[float]] = {side.name: [] for side in sides}
        client_cpus: dict[str, list[float]] = {side.name: [] for side in sides}
        for _ in range(args.rounds):
            for side in sides:
                server = servers[side.name]
                server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
                times = await connect_times(side, server, args.connects)
                server_cpu = server.cpu_seconds() - server_cpu
                client_cpu = time.process_time() - client_cpu
                p50s[side.name].append(pct(times, 0.5) * 1e3)
                cpus[side.name].append((server_cpu + client_cpu) / args.connects * 1e3)
                client_cpus[side.name].append(client_cpu / args.connects * 1e3)
        for side in sides:
            await side.stop()
    for title, table in (
        (f"connect p50 ms (dial + 1st stream), {args.connects} dials per round:", p50s),
        ("CPU ms per dial (dial, 1st stream, close; client + server processes):", cpus),
        ("  of which the client process:", client_cpus),
    ):
        print(title)
        for name, values in table.items():
            shown = " ".join(f"{v:.2f}" for v in values)
            print(f"  {name:<5} median {statistics.median(values):.2f}   rounds: {shown}")
        if len(table) == 2:  # the ratio per round: both sides saw the same load
            ratios = [a / b for a, b in zip(table["kps"], table["iroh"], strict=True)]
            shown = " ".join(f"{r:.2f}" for r in ratios)
            print(f"  kps/iroh median {statistics.median(ratios):.2f}x   rounds: {shown}")


async def main_streams(
    identity: Identity, key: str, payload: bytes, args: argparse.Namespace
) -> None:
    """keywire's aggregate over 1, 4 and 16 streams, the counts alternated round by round."""
    side = KpsSide(identity)
    counts = (1, 4, 16)
    rates: dict[int, list[float]] = {count: [] for count in counts}
    cpus: dict[int, list[float]] = {count: [] for count in counts}
    async with child("kps", key) as server:
        for _ in range(args.rounds):
            for count in counts:
                conn = await side.dial(server)
                started = server.cpu_seconds() + time.process_time()
                rates[count].append(await side.streams(conn, payload, count))
                used = server.cpu_seconds() + time.process_time() - started
                cpus[count].append(used / (len(payload) // count * count) * 1e9)
                await side.close(conn)
    print(f"kps aggregate, {args.size_mb} MB per transfer, {args.rounds} alternated rounds:")
    for count in counts:
        shown = " ".join(f"{r:.0f}" for r in rates[count])
        ratio = statistics.median(r / one for r, one in zip(rates[count], rates[1], strict=True))
        print(
            f"  {count:>2} stream(s): median {statistics.median(rates[count]):6.1f} MB/s "
            f"({ratio:.2f}x of 1 stream, per round), CPU-s/GB both ends "
            f"{statistics.median(cpus[count]):5.2f}; rounds: {shown}"
        )


async def main_iroh(identity: Identity, key: str, payload: bytes, args: argparse.Namespace) -> None:
    try:
        iroh = load_iroh()
    except ImportError:
        print("iroh: not installed (pip install -r bench/requirements-iroh.txt)")
        return
    ours = await compare(KpsSide(identity), key, payload, args)
    theirs = await compare(IrohSide(iroh), key, payload, args)
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"keywire kps vs iroh 1.2 (patched copy), {args.size_mb} MB, median of {args.rounds}, "
        f"{args.connects} connects, {args.idle} idle connections, loop {loop}:"
    )
    print(f"  {'metric':<34}{'kps':>12}{'iroh':>12}{'kps/iroh':>10}")

    def row(name: str, a: float, b: float, unit: str) -> None:
        print(f"  {name:<34}{a:>9.2f} {unit:<2}{b:>9.2f} {unit:<2}{a / b:>9.2f}x")

    for count in (1, 4, 16):
        row(
            f"{count} stream(s), aggregate MB/s",
            ours[f"streams{count}"],
            theirs[f"streams{count}"],
            "",
        )
    for count in (1, 4, 16):
        row(
            f"{count} stream(s), CPU-s/GB both ends", ours[f"cpu{count}"], theirs[f"cpu{count}"], ""
        )
    for q in (0.5, 0.99):
        row(
            f"connect p{int(q * 100)} ms (dial + 1st stream)",
            pct(ours["connect"], q) * 1e3,
            pct(theirs["connect"], q) * 1e3,
            "",
        )
        row(
            f"close() p{int(q * 100)} ms",
            pct(ours["close"], q) * 1e3,
            pct(theirs["close"], q) * 1e3,
            "",
        )
    row("idle connection, listener RSS KB", ours["idle_kb"], theirs["idle_kb"], "")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    identity = Identity.generate()
    with tempfile.TemporaryDirectory() as tmp:
        key = str(Path(tmp) / "bench.pem")
        identity.save(key)
        if args.only_idle:
            await main_idle(identity, key, args)
            return
        if args.only_connect:
            await main_connect(identity, key, args)
            return
        payload = os.urandom(args.size_mb << 20)
        if args.only_iroh:
            await main_iroh(identity, key, payload, args)
            return
        if args.only_streams:
            await main_streams(identity, key, payload, args)
            return
        modes = ("minimal", "qh3", "kps", "tcp")
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                async with child(mode, key) as server:
                    port = server.port
                    if mode == "kps":
                        rates[mode].append(await throughput_kps(port, identity, payload))
                    elif mode == "qh3":
                        rates[mode].append(await throughput_qh3(port, identity, payload))
                    elif mode == "minimal":
                        rates[mode].append(await throughput_minimal(port, identity, payload))
                    else:
                        rates[mode].append(await throughput_tcp(port, payload))
        kps, qh3, minimal, tcp = (
            statistics.median(rates[m]) for m in ("kps", "qh3", "minimal", "tcp")
        )
        print(f"throughput, one stream of {args.size_mb} MB (median of {args.rounds}):")
        print(
            f"  kps {kps:.1f} MB/s | qh3 minimal driver {minimal:.1f} MB/s | "
            f"qh3 asyncio serve/connect {qh3:.1f} MB/s | raw TCP {tcp:.1f} MB/s"
        )
        print(
            f"  kps / qh3 minimal = {kps / minimal:.3f}   kps / qh3 asyncio = {kps / qh3:.3f}"
            f"   kps / TCP = {kps / tcp:.4f}"
        )

        async with child("qh3", key) as server:
            bare = await handshakes_qh3(server.port, identity, args.connects)
        async with child("kps", key) as server:
            port = server.port
            ours = await handshakes_kps(port, identity, args.connects)
            streams_s = await many_streams(port, identity, args.streams)
            sent_rate, delivered = await datagram_rate(port, identity, args.datagrams)
        print(f"handshake over {args.connects} connects (ms):")
        print(
            f"  kps p50 {pct(ours, 0.5) * 1e3:.2f} p99 {pct(ours, 0.99) * 1e3:.2f}   "
            f"bare qh3 p50 {pct(bare, 0.5) * 1e3:.2f} p99 {pct(bare, 0.99) * 1e3:.2f}"
        )
        print(f"  p50 ratio kps / bare qh3 = {pct(ours, 0.5) / pct(bare, 0.5):.3f}")
        print(
            f"{args.streams} concurrent request/response streams on one connection: "
            f"{streams_s * 1e3:.0f} ms ({args.streams / streams_s:.0f} streams/s)"
        )
        print(f"datagrams of 1000 B: {sent_rate:.0f} sent/s, {delivered:.1%} delivered")
        if args.iroh:
            await main_iroh(identity, key, payload, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=32)
    parser.add_argument("--connects", type=int, default=50)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--datagrams", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--iroh", action="store_true", help="compare with iroh (issue 17)")
    parser.add_argument("--only-iroh", action="store_true", help="just the iroh comparison")
    parser.add_argument("--only-connect", action="store_true", help="just connect p50 vs iroh")
    parser.add_argument(
        "--only-streams", action="store_true", help="just kps's 1/4/16-stream curve, alternated"
    )
    parser.add_argument("--idle", type=int, default=100, help="idle connections for RSS")
    parser.add_argument("--only-idle", action="store_true", help="just the idle-RSS row")
    parser.add_argument("--idle-warmup", type=int, default=0, help="connections before --idle")
    parser.add_argument("--uvloop", action="store_true", help="run every process on uvloop")
    parser.add_argument("--serve", choices=("kps", "qh3", "minimal", "tcp", "iroh"))
    parser.add_argument("--key")
    arguments = parser.parse_args()
    if arguments.uvloop:
        os.environ["KEYWIRE_LOOP"] = "uvloop"
    runner: Any = asyncio.run
    if os.environ.get("KEYWIRE_LOOP") == "uvloop":
        import uvloop

        runner = uvloop.run
    if arguments.serve:
        runner(run_server(arguments.serve, arguments.key))
    else:
        runner(main(arguments))
