"""A registered host's dial-backs are not starved by the relay's per-IP shares (issue 18): the
relay owes the host one dial-back per ``relay`` it sent, lets that many connections from the
host's IP in past the IP's full upgrade share, and counts an upgrade that shows its link's
ticket (``?link=ID&ticket=T``) against the host rather than the IP. A connection let in on
credit without the ticket is refused (429), so the credit is no way around the shares."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from keywire.link.host import dialback_url
from tests.core.flood import idle_sockets

from .conftest import RelayProcess
from .rawclient import RawHost, recv, send

pytestmark = pytest.mark.timeout(60)
HOST_IP = "127.0.8.1"


async def from_ip(url: str, ip: str) -> ClientConnection:
    return await connect(url, compression=None, local_addr=(ip, 0), open_timeout=5)


async def refused(url: str, ip: str) -> bool:
    """Whether an upgrade from ``ip`` to ``url`` is refused (dropped, or answered non-101)."""
    try:
        sock = await from_ip(url, ip)
    except Exception:
        return True
    await sock.close()
    return False


async def owed_links(
    url: str, control: ClientConnection, address: str, count: int
) -> tuple[list[ClientConnection], list[dict[str, Any]]]:
    """``count`` clients (each from its own IP) ask for the relay: the host is sent ``relay``."""
    clients, relays = [], []
    for n in range(count):
        client = await from_ip(url, f"127.0.9.{n + 1}")
        await send(client, {"type": "resolve", "address": address})
        found = await recv(client)
        assert (await recv(control))["type"] == "arrived"
        await send(client, {"type": "relay", "linkId": found["linkId"]})
        message = await recv(control)
        assert message["type"] == "relay", message
        clients.append(client)
        relays.append(message)
    return clients, relays


async def accept(url: str, relay: dict[str, Any]) -> ClientConnection:
    end = await from_ip(dialback_url(url, relay["linkId"], relay["ticket"]), HOST_IP)
    await send(end, {"type": "accept", "linkId": relay["linkId"], "ticket": relay["ticket"]})
    assert (await recv(end))["type"] == "relaying"
    return end


async def test_dialbacks_get_in_past_a_full_upgrade_share(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--max-bps", "0")  # production shares: 32 upgrading per IP
    host = RawHost()
    opened: list[ClientConnection] = []
    idle: list[socket.socket] = []
    try:
        async with asyncio.timeout(40):
            control = await from_ip(relay.url, HOST_IP)
            opened.append(control)
            await send(control, host.register(relay.url))
            assert (await recv(control))["type"] == "registered"
            # someone behind the host's IP (a NAT) fills the IP's share with idle upgrades
            idle = idle_sockets(relay.port, 40, [HOST_IP], payload=b"GET /v1/link HTTP/1.1\r\n")
            await asyncio.sleep(0.5)
            assert await refused(relay.url, HOST_IP)  # the share is full for anonymous peers
            clients, relays = await owed_links(relay.url, control, host.address, 6)
            opened += clients
            # a connection on credit that shows no ticket, or a wrong one, is refused
            assert await refused(relay.url, HOST_IP)
            wrong = dialback_url(relay.url, relays[0]["linkId"], "A" * 24)
            assert await refused(wrong, HOST_IP)
            many = relay.url + "?a=1&b=2&c=3&d=4&e=5&link=x&ticket=y"  # garbage query
            assert await refused(many, HOST_IP)
            # the host's real dial-backs get in, and their links relay
            ends = [await accept(relay.url, r) for r in relays]
            opened += ends
            for client, end in zip(clients, ends, strict=True):
                assert (await recv(client))["type"] == "relaying"
                await client.send(b"x" * 1000)
                assert await end.recv() == b"x" * 1000
            # nothing is owed any more: the share is full again for everyone
            assert await refused(relay.url, HOST_IP)
    finally:
        for sock in idle:
            sock.close()
        for ws in opened:
            with contextlib.suppress(Exception):
                await ws.close()
    logs = relay.logs()
    reasons = [json.loads(line).get("limit") for line in logs.splitlines() if "limit" in line]
    assert "dialback_credit" in reasons and "max_upgrading_per_ip" in reasons, logs[-2000:]


async def test_dialbacks_do_not_use_the_ips_socket_share(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    # a host with more live sessions than its IP's socket share: each host end showed its
    # ticket, so only the control socket counts against the IP
    relay = relay_factory("--max-bps", "0", "--max-sockets-per-ip", "4")
    host = RawHost()
    opened: list[ClientConnection] = []
    try:
        async with asyncio.timeout(40):
            control = await from_ip(relay.url, HOST_IP)
            opened.append(control)
            await send(control, host.register(relay.url))
            assert (await recv(control))["type"] == "registered"
            clients, relays = await owed_links(relay.url, control, host.address, 10)
            opened += clients
            opened += [await accept(relay.url, r) for r in relays]
            for client in clients:
                assert (await recv(client))["type"] == "relaying"
            spare = [await from_ip(relay.url, HOST_IP) for _ in range(3)]  # 1 + 3 = the share
            opened += spare
            assert await refused(relay.url, HOST_IP)
            # closing an anonymous socket frees its place in the share
            await spare.pop().close()
            await asyncio.sleep(0.3)
            assert not await refused(relay.url, HOST_IP)
    finally:
        for ws in opened:
            with contextlib.suppress(Exception):
                await ws.close()


def test_the_core_counts_what_it_owes_each_host_ip() -> None:
    """Owed = ``relay`` sent to a host and not yet accepted: up on ``relay``, down on accept,
    on the link's end (client gone, idle), and moved with a re-register from another IP."""
    from .test_relay_core import URL, make_core, register

    core = make_core()
    host = RawHost()
    register(core, 1, host, 0.0)
    relays = []
    for peer in (2, 3, 4):
        core.open(peer, f"10.0.1.{peer}", "relay.example", 0.0)
        found = core.text(peer, json.dumps({"type": "resolve", "address": host.address}), 0.0)
        relay = core.text(
            peer, json.dumps({"type": "relay", "linkId": found[0].message["linkId"]}), 0.0
        )
        relays.append(relay[0].message)
    assert core.dialbacks_owed("10.0.0.1") == 3
    first = relays[0]
    assert not core.dialback_credential(first["linkId"], "A" * 24)
    assert core.dialback_credential(first["linkId"], first["ticket"])
    assert not core.dialback_credential(first["linkId"], first["ticket"])  # once per link
    assert not core.dialback_credential("no-such-link", first["ticket"])
    core.open(9, "10.0.0.1", "relay.example", 0.0)
    core.text(9, json.dumps({"type": "accept", **{k: first[k] for k in ("linkId", "ticket")}}), 0.0)
    assert core.dialbacks_owed("10.0.0.1") == 2
    assert not core.dialback_credential(first["linkId"], first["ticket"])  # no longer pending
    core.closed(3, 0.0)  # a waiting client leaves
    assert core.dialbacks_owed("10.0.0.1") == 1
    core.open(20, "10.0.9.9", "relay.example", 1.0)  # the host re-registers from elsewhere
    core.text(20, json.dumps(host.register(URL, ts=core.wall_ms(1.0))), 1.0)
    assert core.dialbacks_owed("10.0.0.1") == 0 and core.dialbacks_owed("10.0.9.9") == 1
    core.sweep(1000.0)  # the last one times out
    assert core.dialbacks_owed("10.0.9.9") == 0
