"""``keywire doctor``: what this machine's NAT does to UDP, and whether relays answer.

From one UDP socket it asks each STUN server (a relay's ``--stun-port``) for the mapped address:
the same mapping from two servers means endpoint-independent mapping (a direct path can be
punched), different ones mean endpoint-dependent mapping. A server with two ports is also asked
to answer from its other port (CHANGE-REQUEST): if that answer arrives, unsolicited UDP from a
new port gets in (the filtering is not address-and-port-dependent). Relays are checked with
``GET /health``. The verdict says which paths to expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..kps.webrtc.ice import StunError
from .stun import Address
from .stunio import StunEndpoint, open_stun_endpoint, parse_host_port, resolve_server

__all__ = ["DoctorReport", "RelayProbe", "StunProbe", "check_relay", "run_doctor"]

EIM = "endpoint-independent"
EDM = "endpoint-dependent"
UNKNOWN = "unknown"
#: environment fallbacks when no --stun / --relay is given (comma-separated)
ENV_STUN = "KEYWIRE_STUN"
ENV_RELAY = "KEYWIRE_RELAY"


@dataclass
class StunProbe:
    """One STUN server's answer (or why there was none)."""

    server: str
    address: str | None = None
    mapped: str | None = None
    rtt_ms: float | None = None
    error: str | None = None


@dataclass
class RelayProbe:
    """One relay's ``/health`` answer (or why there was none)."""

    url: str
    reachable: bool = False
    rtt_ms: float | None = None
    error: str | None = None


@dataclass
class DoctorReport:
    """Everything ``keywire doctor`` found; ``--json`` prints it as one object."""

    local: str | None = None
    public: str | None = None
    nat: str = UNKNOWN  # "none", "present" or "unknown"
    mapping: str = UNKNOWN  # endpoint-independent, endpoint-dependent or unknown
    port_preserved: bool | None = None
    filtering: str = UNKNOWN  # "open-to-new-ports", "address-and-port-dependent" or unknown
    udp: str = UNKNOWN  # "ok" (a STUN server answered) or "blocked"
    stun: list[StunProbe] = field(default_factory=list)
    relays: list[RelayProbe] = field(default_factory=list)
    verdict: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _local_ip_towards(server: Address) -> str | None:
    """The source address the kernel picks for ``server`` (a connected UDP socket sends
    nothing)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(server)
        return str(probe.getsockname()[0])
    return None


async def _ask(
    endpoint: StunEndpoint, server: Address, label: str, timeout: float
) -> tuple[StunProbe, Address | None, Address | None]:
    """Ask one server; returns the probe, the mapped address and the server's OTHER-ADDRESS."""
    probe = StunProbe(label, _fmt(server))
    started = time.monotonic()
    try:
        result, _ = await endpoint.client.binding(server, timeout=timeout)
    except TimeoutError:
        probe.error = f"no answer within {timeout:g} s"
        return probe, None, None
    except (OSError, StunError) as exc:
        probe.error = str(exc) or type(exc).__name__
        return probe, None, None
    probe.rtt_ms = round((time.monotonic() - started) * 1000, 1)
    probe.mapped = _fmt(result.mapped)
    return probe, result.mapped, result.other


async def _filtering(server: Address, timeout: float) -> str:
    """Whether an answer from the server's other port gets in, asked from a fresh socket.

    A socket of its own, because the probe changes what it tests: the refused answer leaves a
    conntrack entry on a Linux NAT, and a later mapping towards that port then gets another
    external port, so the mapping socket would look endpoint-dependent (seen in the lab)."""
    endpoint = await open_stun_endpoint("0.0.0.0", 0)
    try:
        _, source = await endpoint.client.binding(server, change_port=True, timeout=timeout)
    except (TimeoutError, OSError, StunError):
        return "address-and-port-dependent"
    finally:
        endpoint.close()
    return "open-to-new-ports" if source[1] != server[1] else UNKNOWN


async def check_relay(url: str, timeout: float) -> RelayProbe:
    """``GET /health`` on the relay behind a ``ws(s)://`` (or ``http(s)://``) URL."""
    probe = RelayProbe(url)
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        probe.error = "not a ws://, wss://, http:// or https:// URL"
        return probe
    port = parts.port or (443 if secure else 80)
    started = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                parts.hostname, port, ssl=ssl.create_default_context() if secure else None
            )
            host = parts.netloc.rsplit("@", 1)[-1]
            writer.write(
                f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            status = await reader.readline()
    except TimeoutError:
        probe.error = f"no answer within {timeout:g} s"
        return probe
    except (OSError, ssl.SSLError) as exc:
        probe.error = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
        return probe
    finally:
        if writer is not None:
            writer.close()
    probe.rtt_ms = round((time.monotonic() - started) * 1000, 1)
    fields = status.split()
    if len(fields) >= 2 and fields[1] == b"200":
        probe.reachable = True
    else:
        probe.error = f"unexpected answer {status[:80]!r}"
    return probe


def _verdict(report: DoctorReport) -> str:
    reachable = any(r.reachable for r in report.relays)
    if report.udp == "blocked":
        tail = "; a relay answers" if reachable else ""
        return "UDP gets no answer: connections go through a relay" + tail
    if report.nat == "none":
        return "no NAT on this path: direct connections work (if no firewall drops them)"
    if report.mapping == EIM:
        return "endpoint-independent mapping: direct paths can be punched with most peers"
    if report.mapping == EDM:
        return (
            "endpoint-dependent mapping: a direct path only with peers whose NAT maps "
            "endpoint-independently; with the others connections stay relayed"
        )
    return "mapping unknown: give two STUN servers (or a relay with two STUN ports)"


async def run_doctor(
    stun: list[str], relays: list[str], *, timeout: float = 2.0, local_port: int = 0
) -> DoctorReport:
    """Probe every STUN server from one socket and every relay; never raises for a dead
    server (its probe says why)."""
    report = DoctorReport()
    servers: list[tuple[str, Address]] = []
    for text in stun:
        try:
            servers.append((text, await resolve_server(text)))
        except (OSError, ValueError) as exc:
            report.stun.append(StunProbe(text, error=str(exc)))
    relay_tasks = [asyncio.ensure_future(check_relay(url, timeout)) for url in relays]
    try:
        if servers:
            await _probe_stun(report, servers, timeout, local_port)
        report.relays = list(await asyncio.gather(*relay_tasks))
    finally:
        for task in relay_tasks:
            task.cancel()
    report.verdict = _verdict(report)
    return report


async def _probe_stun(
    report: DoctorReport, servers: list[tuple[str, Address]], timeout: float, local_port: int
) -> None:
    endpoint = await open_stun_endpoint("0.0.0.0", local_port)
    try:
        local_port = endpoint.local[1]
        local_ip = _local_ip_towards(servers[0][1])
        report.local = _fmt((local_ip, local_port)) if local_ip else None
        mapped: dict[Address, Address] = {}
        other: Address | None = None
        changer: Address | None = None
        for label, server in servers:
            probe, got, other_address = await _ask(endpoint, server, label, timeout)
            report.stun.append(probe)
            if got is None:
                continue
            mapped[server] = got
            if other is None and other_address is not None:
                other, changer = other_address, server
        if not mapped:
            report.udp = "blocked"
            return
        report.udp = "ok"
        first = next(iter(mapped.values()))
        report.public = _fmt(first)
        report.port_preserved = first[1] == local_port
        direct = local_ip is not None and first == (local_ip, local_port)
        report.nat = "none" if direct else "present"
        if len(mapped) < 2 and other is not None and other not in mapped:
            probe, got, _ = await _ask(endpoint, other, f"{_fmt(other)} (other port)", timeout)
            report.stun.append(probe)
            if got is not None:
                mapped[other] = got
        if len(mapped) >= 2:
            report.mapping = EIM if len(set(mapped.values())) == 1 else EDM
        if changer is not None:
            report.filtering = await _filtering(changer, timeout)
    finally:
        endpoint.close()


def default_servers(stun: list[str], relays: list[str]) -> tuple[list[str], list[str]]:
    """``--stun``/``--relay`` or their environment fallbacks; a relay without ``--stun`` is
    asked for STUN on its host at port 3478."""
    stun = stun or [s for s in os.environ.get(ENV_STUN, "").replace(" ", "").split(",") if s]
    relays = relays or [r for r in os.environ.get(ENV_RELAY, "").replace(" ", "").split(",") if r]
    if not stun:
        for url in relays:
            host = urlsplit(url).hostname
            if host:
                stun.append(f"[{host}]:3478" if ":" in host else f"{host}:3478")
    for text in stun:
        parse_host_port(text)  # a malformed spec is a usage error, before any probing
    return stun, relays


def render(report: DoctorReport) -> str:
    """The report for a person."""
    lines = [
        f"public address   {report.public or '-'}",
        f"local address    {report.local or '-'}",
        f"NAT              {report.nat}",
        f"mapping          {report.mapping}"
        + (
            ""
            if report.port_preserved is None
            else f" (port {'preserved' if report.port_preserved else 'changed'})"
        ),
        f"filtering        {report.filtering}",
        f"UDP              {report.udp}",
    ]
    for probe in report.stun:
        state = f"mapped {probe.mapped}, {probe.rtt_ms} ms" if probe.mapped else probe.error
        lines.append(f"stun {probe.server:<24} {state}")
    for relay in report.relays:
        state = f"reachable, {relay.rtt_ms} ms" if relay.reachable else relay.error
        lines.append(f"relay {relay.url}  {state}")
    lines.append(f"verdict          {report.verdict}")
    return "\n".join(lines)
