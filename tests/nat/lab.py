"""The NAT lab: Linux network namespaces joined by veth pairs, routers running nftables NAT.

Topology (every name carries a per-run prefix, so parallel runs and other users never clash)::

    PREFIX-inet   the "internet": bridge br0 on 198.51.100.0/24 (RFC 5737), holding the
                  relay's addresses 198.51.100.1 and .2 (two, so mapping behaviour can be seen)
    PREFIX-rX     router of peer X: wan 198.51.100.(10+k) on the bridge, lan 10.k.0.1/24,
                  nftables NAT per preset
    PREFIX-X      peer X: eth0 10.k.0.2/24, default route via its router

Presets (RFC 4787 terms):

* ``full-cone``   endpoint-independent mapping and filtering: port-preserving masquerade, and
                  any UDP arriving at the wan is sent to the peer at the same port;
* ``eim-apdf``    endpoint-independent mapping, address-and-port-dependent filtering: plain
                  port-preserving masquerade (conntrack lets in only replies);
* ``edm-pp``      endpoint-dependent mapping with port preservation: a socket's first mapping
                  keeps its port, every later destination gets a random port (a dynamic set
                  remembers which sockets already hold a mapping);
* ``edm-random``  endpoint-dependent mapping with random ports: ``masquerade random``.

Every router drops unsolicited packets addressed to itself on the wan, as home routers do.
This matters beyond realism: a Linux NAT that accepts such a packet (and answers it with ICMP)
keeps a conntrack entry for it, and a later outbound mapping that would clash with that entry
gets another port, so a hole punch whose first packet arrives early would change the very
mapping it relies on.

Every command runs with a timeout; ``Lab.close`` (also called from ``atexit``) kills what runs
in the lab's namespaces and deletes them, whatever state a test left them in.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

PRESETS = ("full-cone", "eim-apdf", "edm-pp", "edm-random")
#: the relay's two addresses on the internet segment
RELAY_IP = "198.51.100.1"
RELAY_IP2 = "198.51.100.2"
COMMAND_TIMEOUT = 10.0
NETNS_DIR = "/run/netns"
NAME_PREFIX = "kwnat"
KEYWIRE = os.path.join(os.path.dirname(sys.executable), "keywire")


def _nft_rules(preset: str, lan_ip: str) -> str:
    """The router's ruleset for ``preset`` (wan is the NATed side, lan the peer's)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown NAT preset {preset!r}; one of {', '.join(PRESETS)}")
    post = {
        "full-cone": 'oifname "wan" masquerade',
        "eim-apdf": 'oifname "wan" masquerade',
        "edm-pp": (
            'oifname "wan" meta l4proto udp ip saddr . udp sport @mapped masquerade random\n'
            '    oifname "wan" meta l4proto udp add @mapped { ip saddr . udp sport } masquerade\n'
            '    oifname "wan" masquerade'
        ),
        "edm-random": 'oifname "wan" masquerade random',
    }[preset]
    pre = (
        f'iifname "wan" meta l4proto udp ct state new dnat to {lan_ip}'
        if preset == "full-cone"
        else ""
    )
    return f"""
table ip nat {{
  set mapped {{ type ipv4_addr . inet_service; flags dynamic, timeout; timeout 5m; }}
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    {pre}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    {post}
  }}
}}
table inet guard {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new drop
  }}
}}
"""


class LabError(RuntimeError):
    """A lab command failed (its stderr is in the message)."""


def run(
    cmd: Sequence[str],
    *,
    timeout: float = COMMAND_TIMEOUT,
    check: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one command, bounded by ``timeout``; ``LabError`` on failure when ``check``."""
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, input=stdin, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(cmd)}") from exc
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass
class Peer:
    """A peer behind its own NAT router."""

    name: str
    ns: str
    router: str
    preset: str
    private_ip: str
    public_ip: str


@dataclass
class Lab:
    """One lab instance; use as a context manager (or call ``close``)."""

    prefix: str = field(
        default_factory=lambda: f"{NAME_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
    )
    namespaces: list[str] = field(default_factory=list)
    peers: dict[str, Peer] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    loops: list[NsLoop] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        atexit.register(self.close)
        try:
            self.inet = self._add_ns("inet")
            self.ip(self.inet, "link", "add", "br0", "type", "bridge")
            self.ip(self.inet, "addr", "add", f"{RELAY_IP}/24", "dev", "br0")
            self.ip(self.inet, "addr", "add", f"{RELAY_IP2}/24", "dev", "br0")
            self.ip(self.inet, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    # -- building -------------------------------------------------------------------------------
    def ip(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", ns, *args])

    def exec_cmd(self, ns: str, *args: str) -> list[str]:
        """The argv that runs ``args`` inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *args]

    def _add_ns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def add_peer(self, name: str, preset: str) -> Peer:
        """A peer namespace behind a router namespace NATing with ``preset``."""
        if preset not in PRESETS:
            raise ValueError(f"unknown NAT preset {preset!r}; one of {', '.join(PRESETS)}")
        k = len(self.peers) + 1
        router = self._add_ns(f"r{name}")
        peer_ns = self._add_ns(name)
        public_ip, lan_gw, private_ip = f"198.51.100.{10 + k}", f"10.{k}.0.1", f"10.{k}.0.2"
        # wan: a veth from the internet's bridge to the router
        self.ip(
            self.inet,
            "link",
            "add",
            f"v{name}",
            "type",
            "veth",
            "peer",
            "name",
            "wan",
            "netns",
            router,
        )
        self.ip(self.inet, "link", "set", f"v{name}", "master", "br0", "up")
        self.ip(router, "addr", "add", f"{public_ip}/24", "dev", "wan")
        self.ip(router, "link", "set", "wan", "up")
        # lan: a veth from the router to the peer
        self.ip(
            router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", peer_ns
        )
        self.ip(router, "addr", "add", f"{lan_gw}/24", "dev", "lan")
        self.ip(router, "link", "set", "lan", "up")
        self.ip(peer_ns, "addr", "add", f"{private_ip}/24", "dev", "eth0")
        self.ip(peer_ns, "link", "set", "eth0", "up")
        self.ip(peer_ns, "route", "add", "default", "via", lan_gw)
        run(self.exec_cmd(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"))
        run(self.exec_cmd(router, "nft", "-f", "-"), stdin=_nft_rules(preset, private_ip))
        peer = Peer(name, peer_ns, router, preset, private_ip, public_ip)
        self.peers[name] = peer
        return peer

    def block_udp(self, peer: Peer) -> None:
        """Make ``peer``'s router drop all forwarded UDP (a network that allows only TCP)."""
        rules = """
table inet blockudp {
  chain forward {
    type filter hook forward priority filter; policy accept;
    meta l4proto udp drop
  }
}
"""
        run(self.exec_cmd(peer.router, "nft", "-f", "-"), stdin=rules)

    # -- running things inside --------------------------------------------------------------------
    def popen(self, ns: str, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside ``ns``; it is killed by ``close`` if still running."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            self.exec_cmd(ns, *args), **kwargs
        )
        self.procs.append(proc)
        return proc

    def ns_loop(self, ns: str) -> NsLoop:
        """An asyncio loop running inside ``ns`` (closed with the lab)."""
        made = NsLoop(ns)
        self.loops.append(made)
        return made

    def relay(
        self,
        *args: str,
        host: str = RELAY_IP,
        port: int = 8080,
        stun_ports: Sequence[int] = (3478, 3479),
    ) -> str:
        """Start ``keywire relay`` on the internet segment; returns its ws:// URL once it
        listens (the first stdout line)."""
        argv = [KEYWIRE, "relay", "--host", host, "--port", str(port)]
        for stun in stun_ports:
            argv += ["--stun-port", str(stun)]
        log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the relay; a file, not a pipe, so a chatty relay never blocks
        proc = self.popen(self.inet, *argv, *args, stdout=subprocess.PIPE, stderr=log)
        stdout = proc.stdout
        assert stdout is not None
        ready: list[str] = []
        reader = threading.Thread(
            target=lambda: ready.append(stdout.readline().decode()), daemon=True
        )
        reader.start()
        reader.join(COMMAND_TIMEOUT)
        if not ready or not ready[0].startswith("ws://"):
            proc.kill()
            proc.wait(5)
            log.seek(0)
            raise LabError(f"the relay did not start: {ready} {log.read().decode()[-2000:]}")
        url = ready[0].strip()
        if host == "0.0.0.0":  # the relay names loopback; peers reach it on the segment
            url = url.replace("//127.0.0.1:", f"//{RELAY_IP}:", 1)
        return url

    def socket(
        self, ns: str, kind: int = socket.SOCK_DGRAM, bind: tuple[str, int] = ("0.0.0.0", 0)
    ) -> socket.socket:
        """A socket created (and bound) inside ``ns``; it stays there whatever thread uses it.

        setns(2) moves only the calling thread, so a short-lived thread enters the namespace,
        makes the socket and exits; the socket keeps its namespace for life.
        """
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                enter_namespace(ns)
                sock = socket.socket(socket.AF_INET, kind)
                sock.bind(bind)
                result.append(sock)
            except BaseException as exc:  # handed to the caller below
                result.append(exc)

        thread = threading.Thread(target=make, daemon=True)
        thread.start()
        thread.join(COMMAND_TIMEOUT)
        if not result:
            raise LabError(f"could not make a socket in {ns}")
        made = result[0]
        if isinstance(made, BaseException):
            raise made
        return made

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill the lab's processes and delete its namespaces (safe to call twice)."""
        if self.closed:
            return
        self.closed = True
        for loop in self.loops:
            with contextlib.suppress(Exception):
                loop.close()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for ns in reversed(self.namespaces):
            delete_namespace(ns)
        self.namespaces.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def enter_namespace(ns: str) -> None:
    """Move the calling thread into ``ns`` (setns(2) is per thread for network namespaces)."""
    with open(os.path.join(NETNS_DIR, ns)) as handle:
        os.setns(handle.fileno(), os.CLONE_NEWNET)


class NsLoop:
    """An asyncio loop on a thread inside namespace ``ns``: every socket its coroutines open
    lives there, so one test process can be a peer behind NAT and a host on the internet."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        ready.result(COMMAND_TIMEOUT)

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            enter_namespace(self.ns)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        asyncio.set_event_loop(self.loop)
        ready.set_result(None)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run ``coro`` on the namespace's loop and wait for its result (bounded)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        done, _ = concurrent.futures.wait([future], timeout)
        if not done:  # (the coroutine's own TimeoutError is raised below, as it is)
            future.cancel()
            raise LabError(f"timed out after {timeout}s in {self.ns}")
        return future.result()

    def close(self) -> None:
        if not self.loop.is_running():
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=2.0) if tasks else None

        with contextlib.suppress(Exception):
            self.run(drain(), 5.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(COMMAND_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()

    def __enter__(self) -> NsLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def delete_namespace(ns: str) -> None:
    """Kill whatever still runs in ``ns`` (only the lab's own processes run there) and delete
    it; deleting the namespace removes its veths and bridge."""
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run(["ip", "netns", "del", ns], check=False)


def lab_namespaces() -> list[str]:
    """Namespaces named like the lab's, from any run."""
    listed = run(["ip", "netns", "list"], check=False).stdout.splitlines()
    return [line.split()[0] for line in listed if line.startswith(NAME_PREFIX + "-")]


def remove_stale() -> None:
    """Delete namespaces left by lab runs whose process is gone (a killed pytest)."""
    for ns in lab_namespaces():
        try:
            pid = int(ns.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not os.path.exists(f"/proc/{pid}"):
            delete_namespace(ns)


def lab_available() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces)"
    for tool in (["ip", "-V"], ["nft", "--version"]):
        try:
            run(tool)
        except (OSError, LabError) as exc:
            return f"{tool[0]} is missing ({exc}); scripts/install.sh --test installs it"
    return None
