"""The Python QUIC stacks keywire could run KPS on: throughput and per-stream credit, one run.

Why this exists: KPS wants per-stream receive windows that advance only as the application
reads. qh3 2.1 grants stream credit inside its native core, so keywire cannot tie a stream's
window to reads on it (docs/kps.md, "Flow control"). This script measures, for every stack on
PyPI with an aioquic-style API, what it would cost in throughput and whether it can do it.

Modes (``--modes``, comma list):

* ``memory``: a client and a server ``QuicConnection`` joined directly, no sockets: the
  protocol's CPU cost alone, the ceiling any driver can reach. aiopquic has no such mode
  (picoquic runs on its own network thread behind its own UDP socket), so it is skipped here.
* ``asyncio``: ``--size-mb`` MB on one stream over loopback through the stack's own
  ``serve``/``connect``, client and server on one event loop; the server answers one byte after
  the FIN and the clock stops when it arrives. The pseudo-stack ``kps`` runs the same transfer
  through keywire's ``kps:`` (qh3 2.1 with keywire's own driver): what KPS carries today.
* ``credit``: one connection with a 4 MiB connection window and 1 MiB stream windows. The
  client writes 16 MiB on stream A, which the receiving application never reads, then 4 MiB on
  stream B, which it reads, and waits up to 10 s for B's answer. Reported: how much of A the
  stack pushed into the receiving process (credit that followed reads would stop A at its
  1 MiB stream window) and whether B got through. ``aioquic+tied`` is aioquic with its two
  credit writers wrapped so MAX_STREAM_DATA / MAX_DATA = bytes the application read + window:
  the proof that a Python state machine can tie credit to reads. ``kps`` shows keywire today
  (connection credit gated on reads, stream credit not: A holds the connection budget).

The same bytes go the same way through every stack; only the write call differs: aiopquic's
send rings are bounded, so its writer awaits ``send_stream_data_drained``, while aioquic and qh3
queue everything and transmit once (as their own stream writer does). Rounds are interleaved,
every stack once per round, so load from other work on a shared machine hits all alike.
Ratios are against the first stack measured in the mode. A stack not importable here is
reported as such (qh3 1.x and 2.x cannot share one environment: run the script once per
environment). Bench-only stacks: ``pip install -r bench/requirements-stacks.txt``.

    python bench/bench_quic_stacks.py --size-mb 64 --runs 3 qh3 aiopquic aioquic kps
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import socket
import ssl
import sys
import tempfile
import time
import types
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from selfsigned import write_self_signed

CHUNK = 64 << 10
WINDOW = 16 << 20
MIB = 1 << 20
CREDIT_STREAM_WINDOW = 1 * MIB
CREDIT_CONNECTION_WINDOW = 4 * MIB
UNREAD_SIZE = 16 * MIB
READ_SIZE = 4 * MIB


def _module(stack: str) -> str:
    """The importable package behind a stack name (``aioquic+tied`` is aioquic)."""
    return "qh3" if stack == "kps" else stack.split("+")[0]


def _configuration(
    stack: str,
    is_client: bool,
    cert: Path,
    key: Path,
    max_data: int = WINDOW,
    max_stream_data: int = WINDOW,
) -> Any:
    module = importlib.import_module(f"{_module(stack)}.quic.configuration")
    config = module.QuicConfiguration(
        is_client=is_client,
        alpn_protocols=["h3"],
        max_data=max_data,
        max_stream_data=max_stream_data,
    )
    if is_client:
        config.verify_mode = ssl.CERT_NONE
    elif _module(stack) == "aiopquic":
        config.certificate_file, config.private_key_file = str(cert), str(key)
    else:
        config.load_cert_chain(str(cert), str(key))
    return config


def _free_udp_port() -> int:
    """aiopquic's ``serve`` does not report the port it bound, so pick one first."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- memory: protocol CPU only -----------------------------------------------------------------
def _measure_memory(stack: str, size: int, cert: Path, key: Path) -> float:
    """MB/s for ``size`` bytes between two connections joined in memory (a 1 ms tick per round)."""
    connection = importlib.import_module(f"{stack}.quic.connection")
    events = importlib.import_module(f"{stack}.quic.events")
    client = connection.QuicConnection(configuration=_configuration(stack, True, cert, key))
    server = connection.QuicConnection(
        configuration=_configuration(stack, False, cert, key),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    client_addr, server_addr = ("192.0.2.1", 1), ("192.0.2.2", 2)
    clock = 0.0

    def exchange() -> None:
        for datagram, _ in client.datagrams_to_send(now=clock):
            server.receive_datagram(datagram, client_addr, now=clock)
        for datagram, _ in server.datagrams_to_send(now=clock):
            client.receive_datagram(datagram, server_addr, now=clock)

    client.connect(server_addr, now=clock)
    for _ in range(10):
        exchange()
    while client.next_event() or server.next_event():
        pass
    stream_id = client.get_next_available_stream_id()
    chunk = b"\x00" * CHUNK
    sent = received = 0
    started = time.perf_counter()
    while received < size:
        while sent < size and sent - received < 4 * WINDOW // 16:  # a bounded send queue
            sent += CHUNK
            client.send_stream_data(stream_id, chunk, sent >= size)
        clock += 0.001
        exchange()
        while (event := server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                received += len(event.data)
        while client.next_event() is not None:
            pass
    return size / (time.perf_counter() - started) / 1e6


# -- a receiver shared by the asyncio and credit modes ------------------------------------------
def _receiver_class(stack: str) -> type:
    """A protocol that buffers each stream like an application would and answers B's FIN.

    ``read`` names the streams the application reads; with ``tied`` the stack's credit
    writers are wrapped so windows advance only by what was read (aioquic only).
    """
    aio = importlib.import_module(f"{_module(stack)}.asyncio")
    events = importlib.import_module(f"{_module(stack)}.quic.events")
    base: Any = aio.QuicConnectionProtocol
    tied = stack.endswith("+tied")

    class Receiver(base):  # type: ignore[misc]
        instances: ClassVar[list[Any]] = []
        read: ClassVar[set[int] | None] = None  # None: the application reads every stream

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.buffered: dict[int, int] = {}
            self.consumed: dict[int, int] = {}
            Receiver.instances.append(self)
            if tied:
                _tie_credit_to_reads(self._quic, self.consumed)

        def quic_event_received(self, event: Any) -> None:
            if not isinstance(event, events.StreamDataReceived):
                return
            sid = event.stream_id
            self.buffered[sid] = self.buffered.get(sid, 0) + len(event.data)
            if Receiver.read is None or sid in Receiver.read:
                self.consumed[sid] = self.buffered[sid]
            if event.end_stream:
                self._quic.send_stream_data(sid, b"k", True)
                transmit: Callable[[], None] | None = getattr(self, "transmit", None)
                if transmit is not None:
                    transmit()

    return Receiver


def _tie_credit_to_reads(quic: Any, consumed: dict[int, int]) -> None:
    """Make aioquic grant MAX_STREAM_DATA / MAX_DATA as read + window, never more.

    Stock aioquic doubles a window once the peer has *sent* half of it. The wrappers set the
    limit from ``consumed`` and hide the received offsets from the stock doubling rule while
    it runs, so the stock code only emits the frame. Instance attributes, bench only.
    """
    stream_limits, connection_limits = quic._write_stream_limits, quic._write_connection_limits

    def write_stream_limits(self: Any, builder: Any, space: Any, stream: Any) -> None:
        if stream.max_stream_data_local:
            target = consumed.get(stream.stream_id, 0) + CREDIT_STREAM_WINDOW
            stream.max_stream_data_local = max(stream.max_stream_data_local, target)
        highest, stream.receiver.highest_offset = stream.receiver.highest_offset, 0
        try:
            stream_limits(builder, space, stream)
        finally:
            stream.receiver.highest_offset = highest

    def write_connection_limits(self: Any, builder: Any, space: Any) -> None:
        limit = self._local_max_data
        limit.value = max(limit.value, sum(consumed.values()) + CREDIT_CONNECTION_WINDOW)
        used, limit.used = limit.used, 0
        try:
            connection_limits(builder, space)
        finally:
            limit.used = used

    quic._write_stream_limits = types.MethodType(write_stream_limits, quic)
    quic._write_connection_limits = types.MethodType(write_connection_limits, quic)


class _Answer:
    """Futures the client resolves when a stream's answer (its FIN) arrives."""

    def __init__(self) -> None:
        self.done: dict[int, asyncio.Future[None]] = {}

    def wait(self, stream_id: int) -> asyncio.Future[None]:
        return self.done.setdefault(stream_id, asyncio.get_running_loop().create_future())


def _client_class(stack: str, answers: _Answer) -> type:
    aio = importlib.import_module(f"{_module(stack)}.asyncio")
    events = importlib.import_module(f"{_module(stack)}.quic.events")
    base: Any = aio.QuicConnectionProtocol

    class Client(base):  # type: ignore[misc]
        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.StreamDataReceived) and event.end_stream:
                future = answers.wait(event.stream_id)
                if not future.done():
                    future.set_result(None)

    return Client


async def _send(stack: str, client: Any, stream_id: int, size: int, fin: bool = True) -> None:
    """Write ``size`` bytes in ``CHUNK`` pieces the way each stack's API expects.

    aiopquic's rings are bounded, so its writer waits for room; aioquic and qh3 queue without
    limit (their asyncio stream writer does the same), and one transmit starts the sending,
    which their congestion control then paces.
    """
    chunk = b"\x00" * CHUNK
    count = size // CHUNK
    for index in range(count):
        end = fin and index == count - 1
        if _module(stack) == "aiopquic":
            await client._quic.send_stream_data_drained(stream_id, chunk, end)
        else:
            client._quic.send_stream_data(stream_id, chunk, end)
    if _module(stack) != "aiopquic":
        client.transmit()


@contextlib.asynccontextmanager
async def _pair(
    stack: str, cert: Path, key: Path, max_data: int, max_stream_data: int, answers: _Answer
) -> Any:
    """A server with ``_receiver_class`` and a connected client, on loopback."""
    aio = importlib.import_module(f"{_module(stack)}.asyncio")
    receiver = _receiver_class(stack)
    server_config = _configuration(stack, False, cert, key, max_data, max_stream_data)
    port = _free_udp_port() if _module(stack) == "aiopquic" else 0
    server = await aio.serve(
        "127.0.0.1", port, configuration=server_config, create_protocol=receiver
    )
    if not port:
        port = server._transport.get_extra_info("sockname")[1]
    try:
        client_config = _configuration(stack, True, cert, key, max_data, max_stream_data)
        async with aio.connect(
            "127.0.0.1",
            port,
            configuration=client_config,
            create_protocol=_client_class(stack, answers),
        ) as client:
            yield client, receiver
    finally:
        server.close()


# -- asyncio: one stream over loopback ----------------------------------------------------------
async def _measure(stack: str, size: int, cert: Path, key: Path) -> float:
    """MB/s for ``size`` bytes on one stream, client → server, through ``stack``'s asyncio API."""
    if stack == "kps":
        return await _measure_kps(size)
    answers = _Answer()
    async with _pair(stack, cert, key, WINDOW, WINDOW, answers) as (client, _):
        stream_id = client._quic.get_next_available_stream_id()
        answered = answers.wait(stream_id)
        started = time.perf_counter()
        await _send(stack, client, stream_id, size)
        await asyncio.wait_for(answered, timeout=600)
        return size / (time.perf_counter() - started) / 1e6


def _kps() -> Any:
    """keywire's KPS, imported from this checkout's src/ when keywire is not installed."""
    root = Path(__file__).resolve().parents[1] / "src"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("keywire.kps"), importlib.import_module("keywire.identity")


async def _measure_kps(size: int) -> float:
    kps, identity_module = _kps()
    identity = identity_module.Identity.generate()
    settings = kps.KpsSettings()

    async def sink(conn: Any) -> None:
        async for stream in conn:
            while await stream.read():
                pass
            await stream.write(b"k")
            await stream.close_write()

    listener = kps.KpsListener(identity, settings, sink)
    await listener.start("127.0.0.1", 0)
    try:
        conn = await kps.dial("127.0.0.1", listener.port, identity.certhash, settings)
        stream = await conn.open_stream()
        chunk = b"\x00" * CHUNK
        started = time.perf_counter()
        for _ in range(size // CHUNK):
            await stream.write(chunk)
        await stream.close_write()
        assert await asyncio.wait_for(stream.read_all(), timeout=600) == b"k"
        rate = size / (time.perf_counter() - started) / 1e6
        await conn.close()
        return rate
    finally:
        await listener.close(abort_connections=True)


# -- credit: does one unread stream take the connection window? ---------------------------------
async def _credit(stack: str, cert: Path, key: Path) -> str:
    """Write A (never read) then B (read); report A's bytes in the receiver and B's fate."""
    if stack == "kps":
        return await _credit_kps()
    answers = _Answer()
    pair = _pair(stack, cert, key, CREDIT_CONNECTION_WINDOW, CREDIT_STREAM_WINDOW, answers)
    async with pair as (client, receiver):
        stream_a = client._quic.get_next_available_stream_id()
        receiver.read = {stream_a + 4}  # B is the client's next bidi stream
        writer_a = asyncio.create_task(_send(stack, client, stream_a, UNREAD_SIZE, fin=False))
        await asyncio.sleep(0.3)
        stream_b = client._quic.get_next_available_stream_id()
        assert stream_b == stream_a + 4, (stream_a, stream_b)
        answered = answers.wait(stream_b)
        started = time.perf_counter()
        await _send(stack, client, stream_b, READ_SIZE)
        try:
            await asyncio.wait_for(asyncio.shield(answered), timeout=10)
            fate = f"B read in {time.perf_counter() - started:.2f} s"
        except TimeoutError:
            fate = "B BLOCKED (no answer in 10 s)"
        await asyncio.sleep(0.5)
        writer_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer_a
        unread = max((r.buffered.get(stream_a, 0) for r in receiver.instances), default=0)
        tied = unread <= CREDIT_STREAM_WINDOW * 5 // 4 and "BLOCKED" not in fate
        return (
            f"unread A in receiver {unread / MIB:5.2f} MiB, {fate}: "
            f"{'credit follows reads' if tied else 'credit does NOT follow reads'}"
        )


async def _credit_kps() -> str:
    """The same experiment through ``kps:``: A is counted at the sender (acknowledged writes)."""
    kps, identity_module = _kps()
    identity = identity_module.Identity.generate()
    settings = kps.KpsSettings(
        stream_window=CREDIT_STREAM_WINDOW, connection_window=CREDIT_CONNECTION_WINDOW
    )

    async def sink(conn: Any) -> None:
        async for stream in conn:
            if await stream.read(1) == b"B":
                while await stream.read():
                    pass
                await stream.write(b"k")
                await stream.close_write()

    listener = kps.KpsListener(identity, settings, sink)
    await listener.start("127.0.0.1", 0)
    written_a = 0

    async def write_a(stream: Any) -> None:
        nonlocal written_a
        await stream.write(b"A")
        chunk = b"\x00" * CHUNK
        for _ in range(UNREAD_SIZE // CHUNK):
            await stream.write(chunk)
            written_a += CHUNK

    try:
        conn = await kps.dial("127.0.0.1", listener.port, identity.certhash, settings)
        writer_a = asyncio.create_task(write_a(await conn.open_stream()))
        await asyncio.sleep(0.3)
        stream_b = await conn.open_stream()
        started = time.perf_counter()

        async def write_b() -> None:
            await stream_b.write(b"B")
            chunk = b"\x00" * CHUNK
            for _ in range(READ_SIZE // CHUNK):
                await stream_b.write(chunk)
            await stream_b.close_write()
            await stream_b.read_all()

        try:
            await asyncio.wait_for(write_b(), timeout=10)
            fate = f"B read in {time.perf_counter() - started:.2f} s"
        except TimeoutError:
            fate = "B BLOCKED (no answer in 10 s)"
        writer_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer_a
        await conn.abort()  # A's queued bytes would hold a graceful close
        # written_a counts writes that returned: at most send_buffer (1 MiB) is still unsent.
        unread = max(0, written_a - settings.send_buffer)
        return (
            f"unread A in receiver >= {unread / MIB:4.2f} MiB "
            f"(writes accepted {written_a / MIB:.2f} MiB, send buffer 1 MiB), {fate}"
        )
    finally:
        await listener.close(abort_connections=True)


def _run(mode: str, stack: str, size: int, cert: Path, key: Path) -> float:
    if mode == "memory":
        return _measure_memory(stack, size, cert, key)
    if mode == "asyncio":
        return asyncio.run(_measure(stack, size, cert, key))
    raise SystemExit(f"unknown mode {mode!r}: use memory, asyncio or credit")


def _version(stack: str) -> str | None:
    if stack == "kps":
        return f"(keywire on qh3 {metadata.version('qh3')})"
    try:
        return metadata.version(_module(stack))
    except metadata.PackageNotFoundError:
        return None


def _run_mode(mode: str, stacks: list[str], runs: int, size: int, cert: Path, key: Path) -> None:
    """Every stack once per round, ``runs`` rounds, so load from other work hits all alike."""
    measured: dict[str, list[float]] = {}
    for stack in stacks:
        version = _version(stack)
        if version is None:
            print(f"{mode:8} {stack}: not installed in {sys.executable}")
        elif mode == "credit":
            print(f"{mode:8} {stack} {version}: {asyncio.run(_credit(stack, cert, key))}")
        elif mode == "memory" and (stack == "kps" or _module(stack) == "aiopquic"):
            print(f"{mode:8} {stack} {version}: no in-memory driver (skipped)")
        elif not stack.endswith("+tied"):  # +tied moves bytes on the stack's own code path
            measured[stack] = []
    for _ in range(runs):
        for stack in measured:
            measured[stack].append(_run(mode, stack, size, cert, key))
    reference: float | None = None
    for stack, figures in measured.items():
        figures.sort()
        rate = figures[len(figures) // 2]
        reference = reference or rate
        print(
            f"{mode:8} {stack} {_version(stack)}: {rate:.1f} MB/s, "
            f"{rate / reference:.2f}x the first stack "
            f"(runs: {', '.join(f'{f:.1f}' for f in figures)})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "stacks",
        nargs="*",
        default=["qh3", "aiopquic", "aioquic", "kps"],
        help="qh3, aioquic, aiopquic (importable here), aioquic+tied, kps (keywire)",
    )
    parser.add_argument("--size-mb", type=int, default=64, help="MB sent per stack")
    parser.add_argument(
        "--modes",
        default="memory,asyncio,credit",
        help="comma list of: memory (protocol CPU only), asyncio (loopback), credit",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per stack (median reported)")
    args = parser.parse_args()
    size = args.size_mb * 1_000_000 // CHUNK * CHUNK
    with tempfile.TemporaryDirectory() as folder:
        cert, key = write_self_signed(Path(folder))
        for mode in args.modes.split(","):
            _run_mode(mode, args.stacks, args.runs, size, cert, key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
