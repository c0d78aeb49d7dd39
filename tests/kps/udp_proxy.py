"""A lossy UDP proxy for fault tests: drops, reorders and duplicates, or stops forwarding.

Clients send to ``proxy.port``; each client address gets its own upstream socket to the
server, so the server sees one peer per client. Randomness is seeded so a failure replays.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

Address = tuple[Any, ...]


@dataclass
class Faults:
    drop: float = 0.0
    duplicate: float = 0.0
    #: probability a datagram is held back and sent after the next one
    reorder: float = 0.0
    #: stop forwarding anything (a black hole)
    blackhole: bool = False
    seed: int = 1
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


@dataclass
class Counters:
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0


class _Lane:
    """One direction of one client: applies the faults, remembers a held-back datagram."""

    def __init__(self, faults: Faults, counters: Counters) -> None:
        self.faults = faults
        self.counters = counters
        self.held: bytes | None = None

    def forward(self, data: bytes, send: Any) -> None:
        f = self.faults
        if f.blackhole or f.rng.random() < f.drop:
            self.counters.dropped += 1
            return
        if self.held is None and f.rng.random() < f.reorder:
            self.held = data
            self.counters.reordered += 1
            return
        send(data)
        self.counters.forwarded += 1
        if f.rng.random() < f.duplicate:
            send(data)
            self.counters.duplicated += 1
        if self.held is not None:
            held, self.held = self.held, None
            send(held)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy, client: Address) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.lane_in = _Lane(proxy.faults, proxy.counters)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        front = self.proxy.front
        if front is not None:
            self.lane_in.forward(data, lambda d: front.sendto(d, self.client))


class UdpProxy(asyncio.DatagramProtocol):
    """``async with UdpProxy(server_port, Faults(...)) as proxy: dial proxy.port``."""

    def __init__(self, server: Address, faults: Faults | None = None) -> None:
        self.server = server
        self.faults = faults or Faults()
        self.counters = Counters()
        self.front: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Address, _Upstream] = {}
        self._lanes_out: dict[Address, _Lane] = {}
        self._pending: dict[Address, list[bytes]] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> UdpProxy:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.front = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        if self.front is not None:
            self.front.close()
        await asyncio.sleep(0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        upstream = self._upstreams.get(addr)
        if upstream is None:
            if addr in self._pending:
                self._pending[addr].append(data)
                return
            self._pending[addr] = [data]
            task = asyncio.ensure_future(self._open(addr))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
            return
        self._send_up(upstream, addr, data)

    def _send_up(self, upstream: _Upstream, addr: Address, data: bytes) -> None:
        lane = self._lanes_out.setdefault(addr, _Lane(self.faults, self.counters))
        transport = upstream.transport
        if transport is not None:
            lane.forward(data, lambda d: transport.sendto(d, self.server))

    async def _open(self, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_datagram_endpoint(
            lambda: _Upstream(self, addr), local_addr=("127.0.0.1", 0)
        )
        self._upstreams[addr] = upstream
        for data in self._pending.pop(addr, []):
            self._send_up(upstream, addr, data)
