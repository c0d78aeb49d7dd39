"""The coordinated simultaneous open in the NAT lab: a Link host behind one NAT, a client behind
another, the relay on the internet; the direct KPS path opens when the NATs allow it, and the
Link session carries on when they do not."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keywire.address import Scope, parse
from keywire.errors import KeywireError
from keywire.identity import Identity
from keywire.kps import KpsConnection, KpsListener, KpsSettings, dial
from keywire.link.handler import LinkHandler
from keywire.nat.holepunch import PunchError, PunchMessage, decode_message, encode_message
from keywire.nat.punch import PunchSettings, punch_as_client, punch_as_host
from keywire.options import Options
from keywire.stream import Connection, Stream

from ..kps.helpers import echo_handler, listening
from .lab import PRESETS, RELAY_IP, Lab

STUN = (RELAY_IP, 3478)
FAST = PunchSettings(attempts=3, spray_for=1.5, dial_timeout=1.5, stun_timeout=1.0)
PAYLOAD = bytes(range(256)) * 2000  # 512 kB


@dataclass
class Host:
    """A Link host whose first stream per connection runs the hole punch; a KPS listener
    (echo) takes the direct connections."""

    store: Path
    extra_candidates: tuple[tuple[str, int], ...] = ()
    settings: PunchSettings = FAST
    code: asyncio.Future[str] | None = None
    listening: object = None
    kps: KpsListener | None = None
    outcome: asyncio.Future[bool | BaseException] | None = None
    direct: list[KpsConnection] = field(default_factory=list)
    tasks: set[asyncio.Future[None]] = field(default_factory=set)

    async def start(self, relay_url: str) -> str:
        loop = asyncio.get_running_loop()
        self.code, self.outcome = loop.create_future(), loop.create_future()

        self.kps = KpsListener(Identity.generate(), KpsSettings(), self.on_direct)
        await self.kps.start("0.0.0.0", 0)
        options = Options(
            identity=Identity.generate(),
            timeout=5.0,
            extra={
                "link.store_dir": str(self.store),
                "link.pairing_code": True,
                "link.on_pairing_code": lambda _a, code, _i: self.code.set_result(code),  # type: ignore[union-attr]
            },
        )
        self.listening = await LinkHandler().listen(
            parse(f"{relay_url}~link").alternatives[0], options, self.serve
        )
        announced = self.listening.announce(Scope.PUBLIC)  # type: ignore[attr-defined]
        await asyncio.wait_for(asyncio.shield(self.code), 5)
        return str(announced[0])

    async def on_direct(self, conn: KpsConnection) -> None:
        """Direct connections, whichever side dialled: echo them."""
        self.direct.append(conn)
        await echo_handler(conn)

    async def serve(self, conn: Connection) -> None:
        first = True
        async for stream in conn:
            if first:
                first = False
                assert self.kps is not None and self.outcome is not None
                try:
                    ok: bool | BaseException = await punch_as_host(
                        stream,
                        self.kps,
                        STUN,
                        self.settings,
                        on_direct=self.on_direct,
                        extra_candidates=self.extra_candidates,
                    )
                except (KeywireError, OSError, TimeoutError) as exc:
                    ok = exc
                if not self.outcome.done():
                    self.outcome.set_result(ok)
                continue
            task = asyncio.ensure_future(_echo(stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        if self.listening is not None:
            await self.listening.close()  # type: ignore[attr-defined]
        if self.kps is not None:
            await self.kps.close(abort_connections=True)


async def _echo(stream) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(Exception):
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.close_write()


async def _echo_over(conn: Connection | KpsConnection, payload: bytes) -> bytes:
    stream = await conn.open_stream()
    reader = asyncio.ensure_future(stream.read_all())
    await stream.write(payload)
    await stream.close_write()
    return await asyncio.wait_for(reader, 15)


@dataclass
class Outcome:
    direct: bool
    seconds: float
    relayed_echo: bytes
    direct_echo: bytes | None
    host_says: bool | BaseException
    host_direct_conns: int


def run_pair(
    lab: Lab,
    host_preset: str,
    client_preset: str,
    tmp_path: Path,
    *,
    block_client_udp: bool = False,
    extra_candidates: tuple[tuple[str, int], ...] = (),
    settings: PunchSettings = FAST,
) -> Outcome:
    url = lab.relay(host="0.0.0.0", port=8080, stun_ports=(3478, 3479))
    h_peer = lab.add_peer("h", host_preset)
    c_peer = lab.add_peer("c", client_preset)
    if block_client_udp:
        lab.block_udp(c_peer)
    h_loop, c_loop = lab.ns_loop(h_peer.ns), lab.ns_loop(c_peer.ns)
    host = Host(tmp_path / "host", extra_candidates, settings)
    address = h_loop.run(host.start(url))
    assert host.code is not None
    code = host.code.result()

    async def client() -> Outcome:
        conn = await LinkHandler().dial(
            parse(address).alternatives[0],
            Options(timeout=5.0, extra={"link.pairing_code": code}),
        )
        punch_stream = await conn.open_stream()
        started = time.monotonic()
        direct = await punch_as_client(punch_stream, STUN, settings)
        seconds = time.monotonic() - started
        direct_echo = await _echo_over(direct, PAYLOAD) if direct is not None else None
        relayed = await _echo_over(conn, b"over the relay")  # the session carries on
        if direct is not None:
            await direct.close()
        await conn.close()
        return Outcome(direct is not None, seconds, relayed, direct_echo, False, 0)

    outcome = c_loop.run(client(), timeout=60)
    assert host.outcome is not None
    outcome.host_says = h_loop.run(asyncio.wait_for(asyncio.shield(host.outcome), 10))
    outcome.host_direct_conns = len(host.direct)
    h_loop.run(host.close())
    return outcome


def expect_direct(host_preset: str, client_preset: str) -> bool:
    """What this implementation achieves: direct whenever at least one side maps
    endpoint-independently. A full-cone side takes any dial; an endpoint-independent host
    lets in a client whose dial address it knows (STUN on the dial socket, or the predicted
    first mapping of a port-preserving NAT); a port-preserving host dials from a predicted
    address that an endpoint-independent client sprays at; a random side meets an
    address-and-port filtering one by the many-port guess. Both sides endpoint-dependent stay
    relayed."""
    return "full-cone" in (host_preset, client_preset) or "eim-apdf" in (
        host_preset,
        client_preset,
    )


@pytest.mark.parametrize("client_preset", PRESETS)
@pytest.mark.parametrize("host_preset", PRESETS)
def test_pair_matrix(lab: Lab, tmp_path: Path, host_preset: str, client_preset: str) -> None:
    outcome = run_pair(lab, host_preset, client_preset, tmp_path)
    print(
        f"host {host_preset} <- client {client_preset}: "
        f"{'direct' if outcome.direct else 'relay'} after {outcome.seconds * 1000:.0f} ms"
    )
    assert outcome.relayed_echo == b"over the relay"  # the Link session works either way
    if expect_direct(host_preset, client_preset):
        assert outcome.direct, outcome
        assert outcome.direct_echo == PAYLOAD  # byte-exact over the direct path
        assert outcome.host_says is True and outcome.host_direct_conns >= 1
    else:
        assert not outcome.direct and outcome.direct_echo is None
        assert outcome.host_says is False  # the host gave up after its attempts, said bye
        assert outcome.seconds < 12, outcome.seconds  # 3 bounded attempts


def test_udp_blocked_means_relay_only(lab: Lab, tmp_path: Path) -> None:
    outcome = run_pair(lab, "full-cone", "full-cone", tmp_path, block_client_udp=True)
    assert not outcome.direct and outcome.host_says is False
    assert outcome.relayed_echo == b"over the relay"


def test_a_candidate_answering_with_another_certificate_is_not_taken(
    lab: Lab, tmp_path: Path
) -> None:
    """A rogue KPS server at a candidate address (here put first in the host's list) fails the
    certhash pin; the client ends up on the real host, and only there."""
    rogue_loop = lab.ns_loop(lab.inet)
    rogue_conns: list[KpsConnection] = []

    async def rogue_start() -> KpsListener:
        async def on_conn(conn: KpsConnection) -> None:
            rogue_conns.append(conn)

        listener = KpsListener(Identity.generate(), KpsSettings(), on_conn)
        await listener.start(RELAY_IP, 0)
        return listener

    rogue = rogue_loop.run(rogue_start())
    outcome = run_pair(
        lab, "full-cone", "eim-apdf", tmp_path, extra_candidates=((RELAY_IP, rogue.port),)
    )
    assert outcome.direct and outcome.direct_echo == PAYLOAD
    assert outcome.host_direct_conns >= 1
    assert rogue_conns == []  # the client's pin check aborted before its handshake finished
    rogue_loop.run(rogue.close(abort_connections=True))


# -- the messages ---------------------------------------------------------------------------------


def test_messages_round_trip_and_bad_ones_are_refused() -> None:
    certhash = Identity.generate().certhash
    message = PunchMessage("connect", (("198.51.100.11", 4000), ("2001:db8::1", 9)), certhash)
    raw = encode_message(message)
    assert decode_message(raw[2:]) == message
    assert decode_message(encode_message(PunchMessage("result", ok=True))[2:]).ok is True
    reverse = PunchMessage("connect", (("10.0.0.1", 5),), certhash, reverse=True)
    assert decode_message(encode_message(reverse)[2:]) == reverse
    for bad, why in [
        (b"{", "not JSON"),
        (b'{"t":"hello"}', "known type"),
        (b'{"t":"connect","v":2,"addrs":[]}', "version"),
        (b'{"t":"connect","v":1,"addrs":["1.2.3.4:99999"]}', "no valid port"),
        (b'{"t":"connect","v":1,"addrs":["0.0.0.0:5"]}', "unicast"),
        (b'{"t":"connect","v":1,"addrs":["host:5"]}', "not IP:PORT"),
        (
            b'{"t":"connect","v":1,"addrs":' + b'["1.2.3.4:5"' + b',"1.2.3.4:5"' * 8 + b"]}",
            "at most 8",
        ),
        (b'{"t":"connect","v":1,"addrs":[],"certhash":"uAAAA"}', "bad certhash"),
        (b'{"t":"result","ok":"yes"}', "true or false"),
        (b'{"t":"connect","v":1,"addrs":[],"reverse":1}', "true or false"),
        (b"x" * 5000, "at most 4096"),
    ]:
        with pytest.raises(PunchError, match=why):
            decode_message(bad)


# -- a misbehaving peer on the punch stream: a clear error, bounded in time -----------------------


@contextlib.asynccontextmanager
async def _carrier() -> AsyncIterator[tuple[Stream, Stream]]:
    """Two ends of one real stream (KPS on loopback) to run one side of the punch against."""
    accepted: asyncio.Queue[Stream] = asyncio.Queue()

    async def on_conn(conn: KpsConnection) -> None:
        async def take() -> None:
            async for stream in conn:
                await accepted.put(stream)

        keep.append(asyncio.ensure_future(take()))

    keep: list[asyncio.Future[None]] = []
    async with listening(on_conn) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        ours = await conn.open_stream()
        try:
            yield ours, await _first_stream(ours, accepted)
        finally:
            await conn.close()
            for task in keep:
                task.cancel()


async def _first_stream(ours: Stream, accepted: asyncio.Queue[Stream]) -> Stream:
    await ours.write(b"\x00\x02{}")  # a framed message the other side will read first
    theirs = await asyncio.wait_for(accepted.get(), 5)
    assert await theirs.readexactly(4) == b"\x00\x02{}"
    return theirs


QUICK = PunchSettings(attempts=1, stun_timeout=0.3, message_timeout=1.0, dial_timeout=0.5)


async def test_the_client_refuses_an_oversized_or_wrong_message() -> None:
    async with asyncio.timeout(20):
        async with _carrier() as (client_end, host_end):
            await host_end.write(b"\xff\xff")
            with pytest.raises(PunchError, match="at most 4096"):
                await punch_as_client(client_end, ("127.0.0.1", 9), QUICK)
        async with _carrier() as (client_end, host_end):
            await host_end.write(encode_message(PunchMessage("sync")))
            with pytest.raises(PunchError, match="host's connect"):
                await punch_as_client(client_end, ("127.0.0.1", 9), QUICK)


async def test_the_host_refuses_a_wrong_answer_and_bounds_a_silent_one() -> None:
    async with asyncio.timeout(20):
        kps = KpsListener(Identity.generate(), KpsSettings(), echo_handler)
        await kps.start("127.0.0.1", 0)
        try:
            async with _carrier() as (client_end, host_end):
                await client_end.write(encode_message(PunchMessage("sync")))
                with pytest.raises(PunchError, match="client's connect"):
                    await punch_as_host(host_end, kps, ("127.0.0.1", 9), QUICK)
            async with _carrier() as (client_end, host_end):
                started = time.monotonic()
                with pytest.raises(TimeoutError):  # the client never answers
                    await punch_as_host(host_end, kps, ("127.0.0.1", 9), QUICK)
                assert time.monotonic() - started < 3
            async with _carrier() as (client_end, host_end):
                await client_end.close_write()
                with pytest.raises(PunchError, match="ended"):
                    await punch_as_host(host_end, kps, ("127.0.0.1", 9), QUICK)
        finally:
            await kps.close(abort_connections=True)
