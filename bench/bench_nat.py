"""NAT benchmarks of issue 14 in the NAT lab (tests/nat/lab.py; run as root).

1. dial to direct: for every (host preset, client preset) pair, the time from ``keywire.dial``
   of the host's Link address to the first stream that answered over the direct path (p50 over
   ``--dials`` dials), and how many of those dials got a direct path at all (the success table);
2. throughput: one stream echoing ``--size-mb`` MiB over the direct path, as a ratio to plain
   ``kps:`` between the same two namespaces (through the same NAT routers) and to the relayed
   path (``link.direct = false``), and the direct path without resumable streams
   (``link.direct_resume = false``), in the same run: the four connections open first, then
   each round echoes once on each (rotated order), so load changes hit every path alike.

One lab serves every pair: a relay (STUN on 3478/3479, shaping off) on the internet segment,
four hosts (one per preset, each its own router) and four clients. ``--delay-ms`` is added to
each client's outgoing packets by ``DelayBox`` (the lab has no ``tc netem``; docs/nat.md
"Benchmarks"). The lab's namespaces are deleted at the end, also after a failure or Ctrl-C.

    sudo .venv/bin/python bench/bench_nat.py                  # 50 dials per pair, 16 pairs
    sudo .venv/bin/python bench/bench_nat.py --dials 3 --size-mb 8
    sudo .venv/bin/python bench/bench_nat.py --dials 1 --pairs full-cone/eim-apdf --size-mb 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.link.helpers import EchoHost  # noqa: E402
from tests.nat.lab import (  # noqa: E402
    PRESETS,
    Lab,
    NsLoop,
    Peer,
    enter_namespace,
    lab_available,
    remove_stale,
)

import keywire  # noqa: E402
from keywire.address import parse  # noqa: E402
from keywire.identity import Identity  # noqa: E402
from keywire.link.handler import LinkHandler  # noqa: E402
from keywire.nat.linkconn import PathConnection  # noqa: E402
from keywire.options import Options  # noqa: E402
from keywire.stream import Connection, Stream  # noqa: E402

SHORT = {"full-cone": "fc", "eim-apdf": "ea", "edm-pp": "ep", "edm-random": "er"}
#: the pair whose direct path carries the throughput runs (round 1 goes direct there)
THROUGHPUT_PAIR = ("full-cone", "eim-apdf")
KPS_PORT = 40000
CHUNK = 256 * 1024


@dataclass
class Host:
    """A host namespace; each pair gets a fresh Link host there (a pairing code is single-use,
    so every client needs its own)."""

    preset: str
    loop: NsLoop
    public_ip: str
    url: str
    store: Path
    echo: EchoHost | None = None
    tag: str = ""

    def fresh(self, tag: str) -> EchoHost:
        self.stop()
        self.tag = tag
        self.echo = EchoHost([self.url], self.store / tag)
        self.loop.run(self.echo.start())
        return self.echo

    def stop(self) -> None:
        if self.echo is not None:
            self.loop.run(self.echo.close())
            self.echo = None

    @property
    def address(self) -> str:
        assert self.echo is not None
        return self.echo.announced


@dataclass
class Client:
    preset: str
    loop: NsLoop
    store: Path
    box: DelayBox | None = None


@dataclass
class PairResult:
    host: str
    client: str
    direct_ms: list[float] = field(default_factory=list)
    dial_ms: list[float] = field(default_factory=list)
    relayed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def dials(self) -> int:
        return len(self.direct_ms) + self.relayed + len(self.errors)


class DelayBox:
    """Adds ``delay`` seconds to every packet a lab peer sends (so to its round trip with
    anyone), in userspace because the lab's kernel has no ``tc netem``: the peer's default route
    goes into a TUN device; a helper process (``_delay_box_main``: its own interpreter, so the
    delay does not wait for this process's GIL, which both ends' event loops hold most of the
    time) reads each IP packet and, ``delay`` later, sends it out of ``eth0`` to the router's
    MAC on an AF_PACKET socket. Arriving packets are not touched."""

    DEV = "kwdelay"

    def __init__(self, lab: Lab, peer: Peer, delay: float) -> None:
        self.lab, self.peer, self.delay = lab, peer, delay
        self.gateway = peer.private_ip.rsplit(".", 1)[0] + ".1"
        router_mac = _mac(lab, peer.router, "lan")
        own_mac = _mac(lab, peer.ns, "eth0")
        header = bytes.fromhex(router_mac.replace(":", "") + own_mac.replace(":", "")) + (
            b"\x08\x00"
        )
        lab.ip(peer.ns, "tuntap", "add", "dev", self.DEV, "mode", "tun")
        lab.ip(peer.ns, "link", "set", self.DEV, "up")
        args = ["--delay-box", peer.ns, self.DEV, repr(delay), header.hex()]
        self.child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.child.stdout is not None
        ready = threading.Thread(target=self.child.stdout.readline, daemon=True)
        ready.start()
        ready.join(20)
        if ready.is_alive() or self.child.poll() is not None:
            self.close()
            raise RuntimeError(f"delay box in {peer.ns} did not start")

    def on(self) -> None:
        src = self.peer.private_ip
        self.lab.ip(self.peer.ns, "route", "replace", "default", "dev", self.DEV, "src", src)

    def off(self) -> None:
        self.lab.ip(self.peer.ns, "route", "replace", "default", "via", self.gateway)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.off()
        with contextlib.suppress(OSError):
            assert self.child.stdin is not None
            self.child.stdin.close()  # the helper ends when its stdin does
        try:
            self.child.wait(5)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait(5)


def _delay_box_main(ns: str, dev: str, delay: float, header: bytes) -> None:
    """The delay box's helper process: TUN ``dev`` in ``ns`` → ``delay`` later → ``eth0``.
    Prints a line once ready; ends when its stdin closes (also when the bench dies)."""
    tunsetiff, iff_tun, iff_no_pi = 0x400454CA, 0x0001, 0x1000
    enter_namespace(ns)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, tunsetiff, struct.pack("16sH", dev.encode(), iff_tun | iff_no_pi))
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind(("eth0", 0))
    queue: deque[tuple[float, bytes]] = deque()
    ready = threading.Condition()

    def read() -> None:
        while True:
            packet = os.read(fd, 65536)
            with ready:
                queue.append((time.monotonic() + delay, packet))
                ready.notify()

    def send() -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, packet = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    ready.wait(wait)
                    continue
                queue.popleft()
            with contextlib.suppress(OSError):
                out.send(header + packet)

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=send, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.buffer.read()  # until the bench closes it


def _mac(lab: Lab, ns: str, dev: str) -> str:
    shown = json.loads(lab.ip(ns, "-j", "link", "show", dev).stdout)
    return str(shown[0]["address"])


async def _echo(conn: Connection, payload: bytes) -> bytes:
    stream = await conn.open_stream()
    reader = asyncio.ensure_future(stream.read_all())
    try:
        for start in range(0, len(payload), CHUNK):
            await stream.write(payload[start : start + CHUNK])
        await stream.close_write()
        return await asyncio.wait_for(reader, 120)
    finally:
        reader.cancel()


async def _serve_echo(stream: Stream) -> None:
    while chunk := await stream.read():
        await stream.write(chunk)
    await stream.close_write()


def _link_options(client: Client, host: Host, extra: dict[str, object]) -> Options:
    """Pairs once per (client, fresh host); later dials reuse the stored credential."""
    assert host.echo is not None
    return Options(
        timeout=10.0,
        extra={
            "link.pairing_code": host.echo.code,
            "link.store_dir": str(client.store / host.tag),
            **extra,
        },
    )


async def _dial_once(client: Client, host: Host, settle: float) -> tuple[str, float, float]:
    """One dial: ("direct", dial ms, ms to the first byte echoed on a direct stream), or
    ("relay", dial ms, 0) when the punch exchange ended without a direct path."""
    alt = parse(host.address).alternatives[0]
    options = _link_options(client, host, {"link.direct_exchanges": "1"})
    started = time.monotonic()
    conn = await LinkHandler().dial(alt, options)
    dialled = time.monotonic() - started
    assert isinstance(conn, PathConnection)
    direct = asyncio.Event()
    conn.add_path_listener(lambda kind, _remote: direct.set() if kind == "direct" else None)
    try:
        if not conn.path.startswith("direct"):
            settled = asyncio.ensure_future(conn.settled.wait())
            went = asyncio.ensure_future(direct.wait())
            await asyncio.wait({settled, went}, timeout=settle, return_when="FIRST_COMPLETED")
            settled.cancel()
            went.cancel()
        if not conn.path.startswith("direct"):
            return "relay", dialled * 1000, 0.0
        stream = await conn.open_stream()
        await stream.write(b"x")
        first = await asyncio.wait_for(stream.read(1), 10)
        assert first == b"x"
        seconds = time.monotonic() - started
        await stream.close_write()
        return "direct", dialled * 1000, seconds * 1000
    finally:
        await asyncio.wait_for(conn.close(), 10)


def run_pair(client: Client, host: Host, dials: int, settle: float) -> PairResult:
    result = PairResult(host.preset, client.preset)
    host.fresh(f"{SHORT[host.preset]}-{SHORT[client.preset]}")
    for _ in range(dials):
        try:
            kind, dial_ms, direct_ms = client.loop.run(
                _dial_once(client, host, settle), timeout=settle + 30
            )
        except Exception as exc:  # recorded, the run goes on
            result.errors.append(f"{type(exc).__name__}: {exc}"[:160])
            continue
        result.dial_ms.append(dial_ms)
        if kind == "direct":
            result.direct_ms.append(direct_ms)
        else:
            result.relayed += 1
    return result


async def _timed_echo(conn: Connection, size: int) -> tuple[float, float]:
    """MB/s of one echo, and the CPU this process spent per MB carried (both ends run here)."""
    payload = bytes(range(256)) * (size // 256)
    cpu, started = time.process_time(), time.monotonic()
    echoed = await _echo(conn, payload)
    seconds = time.monotonic() - started
    cpu = time.process_time() - cpu
    if echoed != payload:
        raise RuntimeError("echo was not byte-exact")
    return size / seconds / 1e6, cpu * 1e3 / (2 * size / 1e6)


async def _direct_conn(client: Client, host: Host, resume: bool) -> Connection:
    alt = parse(host.address).alternatives[0]
    extra: dict[str, object] = {} if resume else {"link.direct_resume": "false"}
    conn = await LinkHandler().dial(alt, _link_options(client, host, extra))
    assert isinstance(conn, PathConnection)
    try:
        async with asyncio.timeout(20):
            while not conn.path.startswith("direct"):
                await asyncio.sleep(0.02)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _relay_conn(client: Client, host: Host) -> Connection:
    alt = parse(host.address).alternatives[0]
    return await LinkHandler().dial(alt, _link_options(client, host, {"link.direct": "false"}))


async def _kps_server(identity: Identity) -> keywire.Server:
    tasks: set[asyncio.Task[None]] = set()

    async def handle(conn: Connection) -> None:
        async for stream in conn:
            task = asyncio.ensure_future(_serve_echo(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = keywire.Server([f"kps:0.0.0.0:{KPS_PORT}"], Options(identity=identity), handler=handle)
    await server.start()
    return server


def throughput(client: Client, host: Host, size: int, rounds: int) -> dict[str, float]:
    """Median MB/s of an echo over each path between the same two namespaces, the median
    CPU ms per MB (``PATH cpu``) and of per-round ratios (``A/B``). All four connections are
    open first and every round runs each path once, the order rotated, so a change of load
    during the run hits all alike."""
    host.fresh("throughput")
    identity = Identity.generate()
    server = host.loop.run(_kps_server(identity))
    conns: dict[str, Connection] = {}
    try:
        # the full-cone router forwards any UDP at its wan to the host at the same port
        kps = f"kps:{host.public_ip}:{KPS_PORT}:{identity.certhash}"
        conns["kps"] = client.loop.run(keywire.dial(kps), timeout=30)
        conns["direct"] = client.loop.run(_direct_conn(client, host, True), timeout=60)
        conns["plain"] = client.loop.run(_direct_conn(client, host, False), timeout=60)
        conns["relay"] = client.loop.run(_relay_conn(client, host), timeout=30)
        paths = list(conns)
        rates: dict[str, list[float]] = {path: [] for path in paths}
        cpus: dict[str, list[float]] = {path: [] for path in paths}
        for n in range(rounds):
            for path in paths[n % len(paths) :] + paths[: n % len(paths)]:
                rate, cpu = client.loop.run(_timed_echo(conns[path], size), timeout=300)
                rates[path].append(rate)
                cpus[path].append(cpu)
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):
                client.loop.run(conn.close(), timeout=10)
        host.loop.run(server.close())
    medians = {path: statistics.median(values) for path, values in rates.items()}
    medians.update({f"{path} cpu": statistics.median(cpus[path]) for path in paths})
    # the same round's ratio, then the median: steadier than a ratio of medians under load
    for a, b in (("direct", "kps"), ("direct", "plain")):
        medians[f"{a}/{b}"] = statistics.median(
            x / y for x, y in zip(rates[a], rates[b], strict=True)
        )
    return medians


def _p50(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ms" if values else "—"


def report(
    results: list[PairResult], rates: dict[str, float] | None, args: argparse.Namespace
) -> None:
    print(
        f"\ndial → first stream on the direct path, p50 over {args.dials} dial(s) per pair, "
        f"{args.delay_ms:g} ms added to each client's round trip"
    )
    print("| host ↓ / client → | " + " | ".join(PRESETS) + " |")
    print("|---|" + "---|" * len(PRESETS))
    by_pair = {(r.host, r.client): r for r in results}
    for host in PRESETS:
        cells = []
        for client in PRESETS:
            r = by_pair.get((host, client))
            cells.append("" if r is None else _p50(r.direct_ms))
        print(f"| **{host}** | " + " | ".join(cells) + " |")
    print("\ndirect-path success (dials that got a direct path / dials)")
    print("| host ↓ / client → | " + " | ".join(PRESETS) + " |")
    print("|---|" + "---|" * len(PRESETS))
    for host in PRESETS:
        cells = []
        for client in PRESETS:
            r = by_pair.get((host, client))
            cells.append("" if r is None else f"{len(r.direct_ms)}/{r.dials}")
        print(f"| **{host}** | " + " | ".join(cells) + " |")
    dial_all = [ms for r in results for ms in r.dial_ms]
    if dial_all:
        print(
            f"\nkeywire.dial returned (relayed session up): p50 {_p50(dial_all)} over "
            f"{len(dial_all)} dials"
        )
    for r in results:
        for error in r.errors:
            print(f"error {r.host} ← {r.client}: {error}")
    if rates is not None:
        kps, direct, relay = rates["kps"], rates["direct"], rates["relay"]
        print(
            f"\nthroughput, {args.size_mb} MiB echoed on one stream, median of "
            f"{args.rounds} ({THROUGHPUT_PAIR[0]} host ← {THROUGHPUT_PAIR[1]} client)"
        )
        print(f"  plain kps:      {kps:7.1f} MB/s  {rates['kps cpu']:.2f} CPU ms/MB")
        print(
            f"  direct path:    {direct:7.1f} MB/s  {rates['direct cpu']:.2f} CPU ms/MB  "
            f"ratio to kps: {direct / kps:.2f}× (per round: {rates['direct/kps']:.2f}×)"
        )
        plain = rates["plain"]
        print(
            f"  direct, no resume: {plain:4.1f} MB/s  {rates['plain cpu']:.2f} CPU ms/MB  "
            f"with resume / without: {direct / plain:.2f}× "
            f"(per round: {rates['direct/plain']:.2f}×)"
        )
        print(f"  relayed path:   {relay:7.1f} MB/s  direct / relayed: {direct / relay:.2f}×")
        print("  (CPU: this process, both ends; the relay runs in its own process)")


def _pairs(text: str | None) -> list[tuple[str, str]]:
    if not text:
        return [(h, c) for h in PRESETS for c in PRESETS]
    pairs = []
    for item in text.split(","):
        host, _, client = item.partition("/")
        if host not in PRESETS or client not in PRESETS:
            raise SystemExit(f"--pairs: {item!r} is not HOST/CLIENT with presets {PRESETS}")
        pairs.append((host, client))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dials", type=int, default=50, help="dials per preset pair")
    parser.add_argument("--pairs", help="HOST/CLIENT,… (default: all 16)")
    parser.add_argument("--size-mb", type=int, default=16, help="MiB per throughput echo")
    parser.add_argument("--rounds", type=int, default=3, help="throughput echoes per path")
    parser.add_argument(
        "--settle",
        type=float,
        default=15.0,
        help="seconds a dial waits for the punch to go direct or give up",
    )
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=20.0,
        help="added to every packet each client sends (its round trip) during the dials",
    )
    args = parser.parse_args()
    reason = lab_available()
    if reason is not None:
        raise SystemExit(reason)
    remove_stale()
    pairs = _pairs(args.pairs)
    started = time.monotonic()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        # no shaping, and room for a pair's 50+ dials a minute from one client address (the
        # default 60 connections a minute per IP refused dials with 4002 when two pairs with
        # the same client preset ran back to back: they showed as "10/50" direct)
        url = lab.relay(
            "--max-bps",
            "0",
            "--ip-rate-per-min",
            "100000",
            host="0.0.0.0",
            port=8080,
            stun_ports=(3478, 3479),
        )
        hosts: dict[str, Host] = {}
        boxes: list[DelayBox] = []
        clients: dict[str, Client] = {}
        want_tput = not args.no_throughput
        host_presets = {h for h, _ in pairs} | ({THROUGHPUT_PAIR[0]} if want_tput else set())
        client_presets = {c for _, c in pairs} | ({THROUGHPUT_PAIR[1]} if want_tput else set())
        for preset in PRESETS:
            if preset in host_presets:
                peer = lab.add_peer(f"h{SHORT[preset]}", preset)
                loop = lab.ns_loop(peer.ns)
                store = Path(tmp) / f"host-{preset}"
                hosts[preset] = Host(preset, loop, peer.public_ip, url, store)
        for preset in PRESETS:
            if preset in client_presets:
                peer = lab.add_peer(f"c{SHORT[preset]}", preset)
                box = DelayBox(lab, peer, args.delay_ms / 1000) if args.delay_ms > 0 else None
                if box is not None:
                    boxes.append(box)
                    box.on()
                clients[preset] = Client(
                    preset, lab.ns_loop(peer.ns), Path(tmp) / f"c-{preset}", box
                )
        results = []
        for host, client in pairs:
            result = run_pair(clients[client], hosts[host], args.dials, args.settle)
            print(
                f"{host:>10} ← {client:<10} direct {len(result.direct_ms)}/{result.dials}, "
                f"p50 {_p50(result.direct_ms)}"
                + (f" ({len(result.errors)} dials failed: see below)" if result.errors else ""),
                flush=True,
            )
            results.append(result)
        rates = None
        for box in boxes:
            box.off()  # throughput is measured without the added delay
        if want_tput:
            size = args.size_mb << 20
            rates = throughput(
                clients[THROUGHPUT_PAIR[1]], hosts[THROUGHPUT_PAIR[0]], size, args.rounds
            )
        for h in hosts.values():
            h.stop()
        for box in boxes:
            box.close()
    report(results, rates, args)
    print(f"\n(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--delay-box"]:
        _delay_box_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), bytes.fromhex(sys.argv[5]))
    else:
        main()
