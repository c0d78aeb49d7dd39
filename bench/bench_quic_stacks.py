"""Bare throughput of the Python QUIC stacks keywire could run KPS on, in the same run.

Why this exists: KPS wants per-stream receive windows that advance only as the application
reads. qh3 2.1 grants stream credit inside its native core, so keywire cannot tie a stream's
window to reads on it (docs/kps.md, "Flow control"). The stacks that expose Python stream
objects (aioquic, qh3 1.x) could, and this script measures what they would cost.

Each stack sends ``--size-mb`` MB on one stream, with the same windows and a P-256
certificate, two ways: ``memory`` joins a client and a server ``QuicConnection`` directly (no
sockets: the protocol's CPU cost alone, the ceiling any driver can reach), and ``asyncio`` goes
over loopback through the stack's own ``serve``/``connect``. Ratios are against the first stack
measured. A stack that is not importable in
this interpreter is reported as such (qh3 1.x and 2.x cannot share one environment: run the
script once per environment and compare the printed MB/s).

    python bench/bench_quic_stacks.py --size-mb 64 --runs 3 qh3 aioquic
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ssl
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from selfsigned import write_self_signed

CHUNK = 64 << 10
WINDOW = 16 << 20


def _configuration(stack: str, is_client: bool, cert: Path, key: Path) -> Any:
    module = importlib.import_module(f"{stack}.quic.configuration")
    config = module.QuicConfiguration(
        is_client=is_client, alpn_protocols=["h3"], max_data=WINDOW, max_stream_data=WINDOW
    )
    if is_client:
        config.verify_mode = ssl.CERT_NONE
    else:
        config.load_cert_chain(str(cert), str(key))
    return config


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


async def _measure(stack: str, size: int, cert: Path, key: Path) -> float:
    """MB/s for ``size`` bytes on one stream, client → server, through ``stack``'s asyncio API."""
    aio = importlib.import_module(f"{stack}.asyncio")
    events = importlib.import_module(f"{stack}.quic.events")
    protocol_base: Any = aio.QuicConnectionProtocol

    class Sink(protocol_base):  # type: ignore[misc, valid-type]
        """Counts bytes and answers the FIN with one byte, so the sender knows all arrived."""

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.StreamDataReceived) and event.end_stream:
                self._quic.send_stream_data(event.stream_id, b"k", True)
                self.transmit()

    server = await aio.serve(
        "127.0.0.1", 0, configuration=_configuration(stack, False, cert, key), create_protocol=Sink
    )
    port = server._transport.get_extra_info("sockname")[1]
    try:
        client_config = _configuration(stack, True, cert, key)
        async with aio.connect("127.0.0.1", port, configuration=client_config) as client:
            reader, writer = await client.create_stream()
            chunk = b"\x00" * CHUNK
            started = time.perf_counter()
            for _ in range(size // CHUNK):
                writer.write(chunk)
            writer.write_eof()
            await asyncio.wait_for(reader.read(), timeout=600)
            return size / (time.perf_counter() - started) / 1e6
    finally:
        server.close()


def _run(mode: str, stack: str, size: int, cert: Path, key: Path) -> float:
    if mode == "memory":
        return _measure_memory(stack, size, cert, key)
    if mode == "asyncio":
        return asyncio.run(_measure(stack, size, cert, key))
    raise SystemExit(f"unknown mode {mode!r}: use memory or asyncio")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "stacks",
        nargs="*",
        default=["qh3", "aioquic"],
        help="importable QUIC packages with an aioquic-style asyncio API",
    )
    parser.add_argument("--size-mb", type=int, default=64, help="MB sent per stack")
    parser.add_argument(
        "--modes",
        default="memory,asyncio",
        help="comma list of: memory (protocol CPU only), asyncio (loopback)",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per stack (median reported)")
    args = parser.parse_args()
    size = args.size_mb * 1_000_000 // CHUNK * CHUNK
    with tempfile.TemporaryDirectory() as folder:
        cert, key = write_self_signed(Path(folder))
        for mode in args.modes.split(","):
            reference: float | None = None
            for stack in args.stacks:
                try:
                    version = metadata.version(stack)
                except metadata.PackageNotFoundError:
                    print(f"{stack}: not installed in {sys.executable}")
                    continue
                figures = sorted(_run(mode, stack, size, cert, key) for _ in range(args.runs))
                rate = figures[len(figures) // 2]
                reference = reference or rate
                runs = ", ".join(f"{f:.1f}" for f in figures)
                print(
                    f"{mode:8} {stack} {version}: {rate:.1f} MB/s, "
                    f"{rate / reference:.2f}x the first stack (runs: {runs})"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
