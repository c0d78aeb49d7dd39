"""Coordinated simultaneous open over an established Link session (DCUtR-like; docs/nat.md).

Roles follow libp2p DCUtR: the **host** (behind NAT, running a KPS listener) starts, like
DCUtR's B; the **client** (which dialled the host through a relay) answers, like A.

1. both learn their public address with STUN from the socket the direct path will use: the
   host from its KPS listener's socket, the client from a fresh socket it will dial from;
2. host → ``connect`` (its candidates and certhash), starting a timer; client → ``connect``
   (its candidates); the timer gives the round trip;
   (a client's second round offers a predicted candidate instead, see ``_round_socket``);
3. host → ``sync``; the client dials the host's candidates at once (QUIC, pinned by the
   certhash that came through the sealed channel), the host waits half the round trip and
   sprays small UDP datagrams from its listener's socket at the client's candidates, which
   opens its NAT for the client's Initial;
4. client → ``result``; on failure the host tries again (3 attempts in all, as DCUtR advises),
   then sends ``bye``. Nothing is retried after that, so a host that never gets a direct path
   costs nothing more.

Every round but the last bounds its handshake by the round trip it measured (``round_bound``):
a round that cannot work fails in a few hundred milliseconds instead of the full
``dial_timeout``, which the last round keeps. A host that learns from two STUN ports that its
NAT maps endpoint-dependently starts with a reversed round (``probe_mapping``), the kind that
can work for it.

Each side also tells how its NAT maps (two STUN ports), so an endpoint-dependent client offers
a predicted candidate from round 1, and a random-port side facing an endpoint-independent,
address-and-port filtering one runs the many-port guess (``keywire.nat.guess``) in its first
round; older peers, which send none of this, keep the old behaviour.

A third party cannot take the direct path over: the client accepts only a QUIC server that
proves the certhash received inside the authenticated Link channel (``PinMismatch`` otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Sequence

from ..identity import Identity
from ..kps.quic.connection import KpsConnection
from ..kps.quic.dialer import dial
from ..kps.quic.listener import KpsListener
from ..kps.settings import KpsSettings
from ..kps.udp import DatagramDemux, bind_socket
from ..netinfo import addresses_for_scope
from ..stream import Stream
from .guess import GuessBudget, GuessSettings, guess_ports
from .guessio import GuessSockets, send_probes
from .holepunch import (
    MAX_MESSAGE,
    TOKEN_BYTES,
    PunchError,
    PunchMessage,
    decode_message,
    encode_message,
    format_addr,
)
from .stun import Address, BindingResult
from .stunio import StunClient, open_stun_endpoint, query_demux, stun_on_demux

log = logging.getLogger("keywire.nat")

__all__ = ["ClientStart", "OnDirect", "PunchSettings", "punch_as_client", "punch_as_host"]

#: the smallest round trip a punch dial seeds QUIC's estimate with (a LAN's is below a
#: millisecond; a PTO that short would only resend into the same race)
MIN_RTT_SEED = 0.01


@dataclasses.dataclass(frozen=True)
class PunchSettings:
    """Bounds of one upgrade attempt."""

    #: rounds (connect, connect, sync, result) before the host gives up
    attempts: int = 3
    #: the host sprays for at most this long per round, every ``spray_interval`` seconds
    spray_for: float = 2.0
    spray_interval: float = 0.05
    #: the QUIC handshake bound of the last round (and of every round when ``quick_floor`` is 0)
    dial_timeout: float = 2.5
    #: the bound of every round but the last: ``max(quick_rtts × rtt + quick_margin,
    #: quick_floor)`` (at most ``dial_timeout``), ``rtt`` being the round's connect exchange
    #: through the relay. The spray opens the host's mapping at rtt/2, so a handshake that
    #: has not finished by then will not, and the next round (often the one that works) starts
    #: early. The floor covers an Initial lost to the race with the spray (one retransmission
    #: at ~1.5 rtt) and the CPU of a Python handshake on a loaded machine; the last round keeps
    #: ``dial_timeout`` for a slower machine. Figures: docs/nat.md "Results in the lab".
    quick_rtts: float = 4.0
    quick_margin: float = 0.2
    quick_floor: float = 0.3
    #: bound on each STUN query and on waiting for the peer's next message
    stun_timeout: float = 2.0
    message_timeout: float = 10.0
    #: offer private (interface) addresses too, for two peers behind one NAT
    host_candidates: bool = True
    #: the host also asks the STUN server's second port (its OTHER-ADDRESS, else port + 1, as
    #: in ``--stun-port 3478 --stun-port 3479``) at the same time; when the two mappings
    #: differ its NAT maps endpoint-dependently, no client dial can reach it, and (with
    #: ``on_direct``) it starts with the round it dials in. No answer: the usual order.
    probe_mapping: bool = True
    #: the many-port guess, run at most once per exchange when STUN shows one side mapping
    #: to random ports and the other endpoint-independently (``keywire.nat.guess``)
    guess: GuessSettings = dataclasses.field(default_factory=GuessSettings)

    def round_bound(self, rtt: float, last: bool) -> float:
        """The handshake bound of a round whose connect exchange took ``rtt`` seconds."""
        if last or self.quick_floor <= 0:
            return self.dial_timeout
        return min(
            self.dial_timeout, max(self.quick_rtts * rtt + self.quick_margin, self.quick_floor)
        )


async def _read(stream: Stream, timeout: float) -> PunchMessage:
    async with asyncio.timeout(timeout):
        try:
            head = await stream.readexactly(2)
            (size,) = struct.unpack("!H", head)
            if size > MAX_MESSAGE:
                raise PunchError(f"hole-punch message of {size} bytes (at most {MAX_MESSAGE})")
            return decode_message(await stream.readexactly(size))
        except asyncio.IncompleteReadError:
            raise PunchError("the peer ended the hole-punch stream") from None


async def _expect(stream: Stream, kind: str, what: str, timeout: float) -> PunchMessage:
    """Read the next message and fail naming ``what`` was expected unless it is ``kind``."""
    message = await _read(stream, timeout)
    if message.kind != kind:
        raise PunchError(f"expected {what}, got {message.kind!r}")
    return message


async def _cancel_all(side: list[asyncio.Future[object]]) -> None:
    """Cancel a round's side tasks (sprays, probes) and wait until each has ended."""
    for task in side:
        task.cancel()
    for task in side:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _send(stream: Stream, message: PunchMessage) -> None:
    await stream.write(encode_message(message))


def _local_candidates(port: int, wanted: bool) -> list[Address]:
    if not wanted:
        return []
    return [(host, port) for host in addresses_for_scope("0.0.0.0", "private") if ":" not in host]


# -- the host (DCUtR's B) ---------------------------------------------------------------------


OnDirect = Callable[[KpsConnection], Awaitable[None]]


async def punch_as_host(
    stream: Stream,
    listener: KpsListener,
    stun: Address,
    settings: PunchSettings | None = None,
    *,
    on_direct: OnDirect | None = None,
    kps: KpsSettings | None = None,
    extra_candidates: tuple[Address, ...] = (),
    budget: GuessBudget | None = None,
) -> bool:
    """Run the host's side on ``stream``; True once the client reports a direct connection.

    In a normal round the client dials ``listener``, so the connection reaches the listener's
    handler. With ``on_direct`` given, every second round is reversed (for hosts whose NAT maps
    endpoint-dependently): the client listens, the host dials it from a fresh socket and hands
    the connection to ``on_direct``. A host that sees its NAT map endpoint-dependently (see
    ``probe_mapping``) reverses the first round instead of the second, so no round is spent
    on a client dial that cannot reach it.

    ``budget``: the guesses left to this connection (shared by its exchanges); without it,
    one for this exchange."""
    s = settings or PunchSettings()
    budget = budget or GuessBudget()
    kps = kps or KpsSettings()
    demux = listener.demux
    if demux is None:
        raise PunchError("the KPS listener is not started")
    candidates: list[Address] = list(extra_candidates)
    public_ip: str | None = None
    filtering = asyncio.ensure_future(_open_filter(stun, s)) if s.guess.enabled else None
    mapped, dependent = await _host_mapping(demux, stun, s)
    open_ = await _filter_seen(filtering)
    nat = _nat_kind(mapped, dependent, listener.port)
    log.debug("punch host: stun %s %s open=%s", mapped, nat, open_)
    ext = ("guess",) if s.guess.enabled else ()
    guessed = False  # at most one guess per exchange, and only while the budget lasts
    if mapped is not None:
        candidates.append(mapped)
        public_ip = mapped[0]
    else:
        log.info("hole punch: no STUN answer from %s; offering host addresses only", stun)
    candidates += _local_candidates(listener.port, s.host_candidates)
    loop = asyncio.get_running_loop()
    best_rtt: float | None = None  # of the forward rounds, whose exchange is a bare round trip
    # an endpoint-dependent host starts with the round it dials in (and ends with it, the last
    # round's full bound going to the kind of round that can work for it)
    first_reverse = 0 if dependent is True and on_direct is not None else 1
    for attempt in range(s.attempts):
        started = loop.time()
        reverse = on_direct is not None and public_ip is not None and attempt % 2 == first_reverse
        if reverse:
            assert on_direct is not None and public_ip is not None
            last = attempt == s.attempts - 1
            may_guess = not guessed and nat == "edm-random" and budget.remaining > 0
            ok, used = await _reverse_round(
                stream, listener, public_ip, s, kps, on_direct, last, best_rtt, may_guess
            )
            if used:
                budget.take()
            guessed = guessed or used
        else:
            await _send(
                stream,
                PunchMessage(
                    "connect",
                    tuple(candidates),
                    listener.identity.certhash,
                    nat=nat,
                    ext=ext,
                    public=mapped,
                    open=open_,
                ),
            )
            # the ports to probe if the client asks for the guess, drawn while its answer travels
            ports = (
                guess_ports(s.guess.probes)
                if ext and nat == "eim" and not open_ and not guessed and budget.remaining > 0
                else None
            )
            answer = await _expect(stream, "connect", "the client's connect", s.message_timeout)
            rtt = loop.time() - started
            best_rtt = rtt if best_rtt is None else min(best_rtt, rtt)
            await _send(stream, PunchMessage("sync"))
            side: list[asyncio.Future[object]] = [
                loop.create_task(_spray(demux.sendto, answer.addrs, rtt / 2, s))
            ]
            token, ip = answer.guess_token, answer.guess_ip
            if (
                token is not None
                and ip is not None
                and ext
                and nat == "eim"
                and not guessed
                and budget.take()
            ):
                # the client (random ports) opened its sockets towards our public address
                guessed = True
                log.info("hole punch: probing %d guessed ports of %s", s.guess.probes, ip)
                side.append(loop.create_task(send_probes(demux.sendto, ip, token, s.guess, ports)))
            try:
                ok = await _read_result(stream, s)
            finally:
                await _cancel_all(side)
        log.info(
            "hole punch attempt %d (%s%s): %s",
            attempt + 1,
            "host dials" if reverse else "client dials",
            ", guessed" if guessed else "",
            "direct" if ok else "failed",
        )
        if ok:
            return True
    await _send(stream, PunchMessage("bye"))
    return False


async def _open_filter(stun: Address, s: PunchSettings) -> bool:
    """Whether this side's NAT lets in datagrams from a port it never sent to: a fresh socket
    asks the STUN server to answer from its other port (RFC 5780 "change port"). Run beside
    the mapping probe and only looked at once that is over (``_filter_seen``), so a filtering
    NAT, whose answer never comes, costs no wait."""
    endpoint = await open_stun_endpoint()
    try:
        await endpoint.client.binding(stun, change_port=True, timeout=s.stun_timeout)
        return True
    finally:
        endpoint.close()


async def _filter_seen(task: asyncio.Future[bool] | None, wait: bool = True) -> bool:
    """The filter probe's answer if it has come (else, or without a probe: filtering
    assumed); the probe ends. Only the guess needs it, so it runs only when that is on."""
    if task is None:
        return False
    if wait:
        # an answer already in flight (it left with the mapping queries) gets a moment; a
        # probe that misses it only means an unneeded guess
        await asyncio.wait({task}, timeout=0.003)
    open_ = task.done() and not task.cancelled() and task.exception() is None and task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return bool(open_)


def _nat_kind(mapped: Address | None, dependent: bool | None, port: int) -> str | None:
    """What the peer is told of this side's NAT: ``eim``, ``edm-pp`` (the socket's first
    mapping kept its port) or ``edm-random``; None when STUN did not show it."""
    if mapped is None or dependent is None:
        return None
    if not dependent:
        return "eim"
    return "edm-pp" if mapped[1] == port else "edm-random"


async def _host_mapping(
    demux: DatagramDemux, stun: Address, s: PunchSettings
) -> tuple[Address | None, bool | None]:
    """The listener socket's public address, and whether a second STUN port saw another
    (endpoint-dependent mapping; None: unknown)."""
    with stun_on_demux(demux) as client:
        return await _probe_mapping(client, stun, s)


async def _probe_mapping(
    client: StunClient, stun: Address, s: PunchSettings
) -> tuple[Address | None, bool | None]:
    """Ask ``stun`` and its second port at once. The second query goes out with the first;
    once the first answers, the second gets as long again (at least 50 ms; twice that when
    the server named another port and it is asked only now) before it counts as unanswered
    (the mapping's kind then stays unknown: None)."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Future[tuple[BindingResult, Address]]] = []

    def ask(server: Address, timeout: float) -> asyncio.Future[tuple[BindingResult, Address]]:
        tasks.append(asyncio.ensure_future(client.binding(server, timeout=timeout)))
        return tasks[-1]

    started = loop.time()
    first = ask(stun, s.stun_timeout)
    second = ask((stun[0], stun[1] + 1), s.stun_timeout) if s.probe_mapping else None
    try:
        try:
            result, _ = await first
        except TimeoutError:
            return None, None
        if second is None:
            return result.mapped, None
        grace = max(loop.time() - started, 0.05)
        other = result.other
        if other is not None and other != (stun[0], stun[1] + 1):
            grace *= 2  # the server named its other port: ask that one instead
            second = ask(other, grace)
        try:
            async with asyncio.timeout(grace):
                seen, _ = await second
        except Exception as exc:  # no answer (or no route): the mapping stays unknown
            log.debug("hole punch: no answer from the second STUN port: %r", exc)
            return result.mapped, None
        dependent = seen.mapped != result.mapped
        if dependent:
            log.info(
                "hole punch: this side's NAT maps endpoint-dependently (%s, then %s)",
                format_addr(result.mapped),
                format_addr(seen.mapped),
            )
        return result.mapped, dependent
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:  # collected, so a query that failed meanwhile is not reported
            with contextlib.suppress(BaseException):
                await task


async def _read_result(stream: Stream, s: PunchSettings) -> bool:
    result = await _expect(stream, "result", "the client's result", s.message_timeout)
    return result.ok


async def _reverse_round(
    stream: Stream,
    listener: KpsListener,
    public_ip: str,
    s: PunchSettings,
    kps: KpsSettings,
    on_direct: OnDirect,
    last: bool,
    known_rtt: float | None,
    may_guess: bool,
) -> tuple[bool, bool]:
    """The host dials: it offers the *predicted* address of a fresh socket (its public IP and
    the socket's port: the first mapping of a port-preserving NAT), the client sprays at it
    from its own listener and the host dials that listener after half the round trip.

    This round's exchange also spans the client's listener start and STUN query, so a round
    trip measured in an earlier round (``known_rtt``), when smaller, is the one used.

    With ``may_guess`` (this host's NAT picks random ports) and a client that says its NAT
    maps endpoint-independently and takes part, the host also opens the guess sockets towards
    the client's listener and asks it (in ``sync``) to probe; the first winning socket dials
    too. Returns (direct, whether the guess ran)."""
    loop = asyncio.get_running_loop()
    sock = bind_socket("0.0.0.0", 0, dual_stack=False)
    port = int(sock.getsockname()[1])
    guesser: GuessSockets | None = None
    opening: asyncio.Future[None] | None = None
    try:
        offer = [(public_ip, port), *_local_candidates(port, s.host_candidates)]
        started = loop.time()
        ext = ("guess",) if s.guess.enabled else ()
        await _send(
            stream,
            PunchMessage(
                "connect", tuple(offer), listener.identity.certhash, reverse=True, ext=ext
            ),
        )
        answer = await _read(stream, s.message_timeout)
        if answer.kind != "connect" or answer.certhash is None:
            raise PunchError("expected the client's connect with its listener's certhash")
        rtt = loop.time() - started
        log.debug("punch host: client's connect in, rtt %.1f ms", rtt * 1000)
        if known_rtt is not None:
            rtt = min(rtt, known_rtt)
        sync = PunchMessage("sync")
        if (
            may_guess
            and s.guess.enabled
            and answer.nat == "eim"
            and not answer.open  # a client open to new ports takes the predicted dial
            and "guess" in answer.ext
            and answer.public is not None
        ):
            token = os.urandom(TOKEN_BYTES)
            guesser = GuessSockets(s.guess.sockets, answer.public, token)
            log.info(
                "hole punch: %d guess sockets towards %s",
                s.guess.sockets,
                format_addr(answer.public),
            )
            sync = PunchMessage("sync", guess_token=token, guess_ip=public_ip)
        await _send(stream, sync)
        log.debug("punch host: sync sent, guess=%s", guesser is not None)
        if guesser is not None:  # while sync travels (the client probes once it has it) and
            # the predicted dial starts: in chunks, so that dial is not held up
            opening = asyncio.ensure_future(guesser.open_gradually())
        await asyncio.sleep(rtt / 2)
    except BaseException:
        sock.close()
        if opening is not None:
            opening.cancel()
        if guesser is not None:
            guesser.close()
        raise
    bound = s.round_bound(rtt, last)  # the dial owns the socket from here
    log.debug("punch host: dials, %d guess sockets open", len(guesser.sockets) if guesser else 0)
    if guesser is None:
        conn = await _dial_first(answer.addrs, answer.certhash, sock, bound, rtt, kps)
        ok = await _read_result(stream, s)
    else:
        assert answer.public is not None
        try:
            conn, ok = await _dial_both(
                stream,
                _dial_first(answer.addrs, answer.certhash, sock, bound, rtt, kps),
                _guess_dial(guesser, answer.public, answer.certhash, s, bound, rtt, kps),
                guesser,
                public_ip,
                s,
            )
        finally:
            if opening is not None:
                opening.cancel()
                with contextlib.suppress(BaseException):
                    await opening
            guesser.close()
    if conn is None:
        return False, guesser is not None
    if not ok:
        conn.abort(0, "the client saw no direct connection")
        return False, guesser is not None
    await on_direct(conn)
    return True, guesser is not None


async def _guess_dial(
    guesser: GuessSockets,
    target: Address,
    certhash: str,
    s: PunchSettings,
    bound: float,
    rtt: float,
    kps: KpsSettings,
) -> KpsConnection | None:
    """Wait for a guess socket to win, then dial ``target`` from it."""
    won = await guesser.wait(s.guess.seconds)
    if won is None:
        log.info("hole punch: no guess probe arrived (%d rejected)", guesser.rejected)
        return None
    log.info("hole punch: guess socket %s won", won.getsockname()[1])
    log.debug("punch: guess winner dials")
    return await _dial_first((target,), certhash, guesser.take(won), bound, rtt, kps)


async def _dial_both(
    stream: Stream,
    predicted: Coroutine[object, object, KpsConnection | None],
    guessed: Coroutine[object, object, KpsConnection | None],
    guesser: GuessSockets,
    public_ip: str,
    s: PunchSettings,
) -> tuple[KpsConnection | None, bool]:
    """The host's two dials of a reversed guess round, kept until the client's ``result``
    names the one its listener took (``via``: the guess winner's public address, which its
    probe named, or another one: the predicted socket's); the other is aborted. Both may
    complete, and the two ends must not keep different ones."""
    tasks = [asyncio.ensure_future(predicted), asyncio.ensure_future(guessed)]
    conn: KpsConnection | None = None
    try:
        result = await _expect(stream, "result", "the client's result", s.message_timeout)
        keep: asyncio.Future[KpsConnection | None] | None = None
        if result.ok:
            if result.via is None:  # not said: the first to complete
                done, _ = await asyncio.wait(tasks, timeout=s.round_bound(0.0, True))
                keep = next(iter(done)) if done else None
            else:
                won = (public_ip, guesser.mapped_port)
                keep = tasks[1] if result.via == won else tasks[0]
        if keep is not None:
            with contextlib.suppress(Exception, TimeoutError):
                async with asyncio.timeout(s.round_bound(0.0, True)):
                    conn = await asyncio.shield(keep)
        return conn, result.ok
    finally:
        await _stop_others(tasks, conn, "the client took the other path")


async def _stop_others(
    tasks: Sequence[asyncio.Future[KpsConnection] | asyncio.Future[KpsConnection | None]],
    kept: KpsConnection | None,
    reason: str,
) -> None:
    """Cancel the attempts still running and abort every connection but ``kept`` that one
    of them made (an attempt may complete between the decision and its cancellation)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            other = await task
            if other is not None and other is not kept:
                other.abort(0, reason)


async def _first_connection(
    attempts: list[Coroutine[object, object, KpsConnection | None]],
) -> KpsConnection | None:
    """Run the attempts at once; the first connection wins and the others are stopped (a
    connection that completes meanwhile is aborted)."""
    tasks = [asyncio.ensure_future(a) for a in attempts]
    winner: KpsConnection | None = None
    try:
        for next_done in asyncio.as_completed(tasks):
            with contextlib.suppress(Exception):
                winner = await next_done
            if winner is not None:
                break
    finally:
        await _stop_others(tasks, winner, "another path won")
    return winner


async def _spray(
    sendto: Callable[[bytes, Address], None],
    targets: tuple[Address, ...],
    delay: float,
    s: PunchSettings,
) -> None:
    """After ``delay``, small random datagrams at every target until cancelled or done; they
    open this side's NAT mapping towards the client (QUIC drops them as undecryptable)."""
    await asyncio.sleep(delay)
    deadline = asyncio.get_running_loop().time() + s.spray_for
    while asyncio.get_running_loop().time() < deadline:
        for target in targets:
            with contextlib.suppress(OSError):
                sendto(os.urandom(12), target)
        await asyncio.sleep(s.spray_interval)


# -- the client (DCUtR's A) -------------------------------------------------------------------


async def _stun_socket(
    stun: Address, s: PunchSettings, probe: bool = False
) -> tuple[socket.socket, Address | None, bool | None]:
    """A fresh UDP socket, its public address as ``stun`` sees it (None: no answer) and, with
    ``probe``, whether the second STUN port saw another mapping (None: not known)."""
    sock = bind_socket("0.0.0.0", 0, dual_stack=False)
    loop = asyncio.get_running_loop()

    def send(data: bytes, addr: Address) -> None:
        sock.sendto(data, addr)

    client = StunClient(send)

    async def receive() -> None:
        while True:
            data, addr = await loop.sock_recvfrom(sock, 2048)
            client.feed(data, addr)

    reader = loop.create_task(receive())
    keep = False
    try:
        if probe and s.probe_mapping:
            mapped, dependent = await _probe_mapping(client, stun, s)
            keep = True
            return sock, mapped, dependent
        try:
            result, _ = await client.binding(stun, timeout=s.stun_timeout)
        except TimeoutError:
            keep = True
            return sock, None, None
        keep = True
        return sock, result.mapped, None
    finally:
        # the pending receive goes first: a socket closed under it frees its fd number for the
        # next socket while asyncio still watches it
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await reader
        if not keep:
            sock.close()


class RoundListener:
    """A reversed round's listener: a fresh identity on a fresh socket, the socket's STUN
    mapping, and the first connection it accepts (later ones are refused)."""

    def __init__(self, kps: KpsSettings) -> None:
        self.arrived: asyncio.Future[KpsConnection] = asyncio.get_running_loop().create_future()
        self.listener = KpsListener(Identity.generate(), kps, self._on_connection)
        self.public: Address | None = None

    async def _on_connection(self, conn: KpsConnection) -> None:
        log.debug("punch client: listener accepted %s", conn.remote_address)
        if not self.arrived.done() and conn.remote_address is not None:
            self.arrived.set_result(conn)
        else:
            conn.abort(0, "one direct connection per round")

    @classmethod
    async def start(cls, stun: Address, s: PunchSettings, kps: KpsSettings) -> RoundListener:
        """Listen on a fresh port and learn its mapping (None when STUN does not answer)."""
        ready = cls(kps)
        await ready.listener.start("0.0.0.0", 0)
        assert ready.listener.demux is not None
        try:
            with contextlib.suppress(TimeoutError):
                found = await query_demux(ready.listener.demux, stun, timeout=s.stun_timeout)
                ready.public = found.mapped
        except BaseException:
            await ready.listener.close()
            raise
        return ready


async def _abandon[T](task: asyncio.Future[T]) -> T | None:
    """Cancel work started ahead and wait until it has ended: what it made all the same (it
    finished first; the caller frees it), else None. Unlike awaiting the task under a blanket
    ``suppress``, a cancellation of the caller itself still propagates."""
    task.cancel()
    await asyncio.wait({task})
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


async def _discard_listener(task: asyncio.Future[RoundListener] | None) -> None:
    """Close a listener started ahead for a reversed round that never came."""
    if task is None:
        return
    ready = await _abandon(task)
    if ready is not None:
        with contextlib.suppress(Exception):
            await ready.listener.close()


async def _listen_round(
    stream: Stream,
    offer: PunchMessage,
    round_listener: Awaitable[RoundListener],
    s: PunchSettings,
    kps: KpsSettings,
    last: bool,
    nat: str | None,
    open_: bool,
) -> KpsConnection | None:
    """A reversed round: listen on ``round_listener`` (a fresh socket with its own certhash
    and STUN mapping, started ahead when it could be), spray
    at the host's predicted address when ``sync`` comes, and take the host's connection.
    A ``sync`` carrying a guess (the host's NAT picks random ports) also sends the probes
    from the listener's socket to the host's IP; the host dials from the socket that won.

    The host dials when ``sync`` arrives here and gives up after its round bound, which it
    may have taken from a round trip up to twice ours (its exchange also spans our listener
    start and STUN query); the wait allows that, plus a round trip for its last flight."""
    ready = await round_listener
    listener, arrived, public = ready.listener, ready.arrived, ready.public
    keep = False
    try:
        assert listener.demux is not None
        ours: list[Address] = [public] if public is not None else []
        ours += _local_candidates(listener.port, s.host_candidates)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        takes_part = s.guess.enabled and "guess" in offer.ext
        await _send(
            stream,
            PunchMessage(
                "connect",
                tuple(ours),
                listener.identity.certhash,
                nat=nat,
                ext=("guess",) if takes_part else (),
                public=public,
                open=open_,
            ),
        )
        log.debug("punch client: listener connect sent (public %s)", public)
        # the ports to probe, drawn while sync travels: the host guesses against this side
        # only if it maps independently and filters (its choice; unused ports cost nothing)
        ports = guess_ports(s.guess.probes) if takes_part and nat == "eim" and not open_ else None
        sync = await _expect(stream, "sync", "sync", s.message_timeout)
        rtt = loop.time() - sent
        log.debug("punch client: sync in, rtt %.1f ms", rtt * 1000)
        side: list[asyncio.Future[object]] = [
            asyncio.ensure_future(_spray(listener.demux.sendto, offer.addrs, 0.0, s))
        ]
        wait = s.dial_timeout + 1.0 if last else s.round_bound(2 * rtt, False) + rtt
        if takes_part and sync.guess_token is not None and sync.guess_ip is not None:
            log.info("hole punch: probing %d guessed ports of %s", s.guess.probes, sync.guess_ip)
            side.append(
                asyncio.ensure_future(
                    send_probes(
                        listener.demux.sendto, sync.guess_ip, sync.guess_token, s.guess, ports
                    )
                )
            )
            wait = max(wait, s.guess.seconds + s.round_bound(2 * rtt, last) + rtt)
        try:
            async with asyncio.timeout(wait):
                conn = await asyncio.shield(arrived)
        except TimeoutError:
            conn = None
        finally:
            await _cancel_all(side)
        via = _plain(conn.remote_address) if conn is not None else None
        log.debug("punch client: listener took %s", via)
        await _send(stream, PunchMessage("result", ok=conn is not None, via=via))
        keep = conn is not None
        return conn
    finally:
        # stop accepting; a connection that won keeps the socket until it ends
        await listener.close(abort_connections=not keep)


def _plain(addr: tuple[object, ...] | None) -> Address | None:
    """``(ip, port)`` of a socket address, an IPv4-mapped IPv6 one as plain IPv4."""
    if addr is None or len(addr) < 2:
        return None
    host, port = str(addr[0]), addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return (host, int(port)) if isinstance(port, int) else None


async def _round_socket(
    stun: Address, attempt: int, public_ip: str | None, s: PunchSettings, nat: str | None
) -> tuple[socket.socket, Address | None, str | None]:
    """The socket for round ``attempt`` and the candidate it offers.

    Even rounds ask STUN from the socket itself (right for any endpoint-independent NAT, port
    preserved or not). Odd rounds, and every round once this side knows its NAT maps
    endpoint-dependently, offer a *predicted* candidate instead (the public IP is known by
    then): the public IP and the socket's own port, asking nothing, so the dial to the host
    is the socket's first mapping, which a port-preserving endpoint-dependent NAT keeps."""
    if (attempt % 2 == 1 or nat in ("edm-pp", "edm-random")) and public_ip is not None:
        sock = bind_socket("0.0.0.0", 0, dual_stack=False)
        return sock, (public_ip, int(sock.getsockname()[1])), public_ip
    sock, mapped, _ = await _stun_socket(stun, s)
    return sock, mapped, mapped[0] if mapped is not None else public_ip


async def _first_socket(
    stun: Address, s: PunchSettings
) -> tuple[socket.socket, Address | None, str | None, str | None, bool]:
    """Round 1's socket, its candidate, the public IP, this side's NAT kind and whether its
    NAT lets in new ports (``_open_filter``).

    STUN is asked at both of the server's ports: an endpoint-independent NAT gives one mapping
    and this socket dials with it. Two mappings mean the mapping towards the host will be
    another one again, so that socket is spent: round 1 offers a predicted candidate from a
    fresh socket instead (the first mapping of a port-preserving NAT keeps the port), as
    round 3 used to, and the host learns ``nat`` (a random one may ask for the guess)."""
    filtering = asyncio.ensure_future(_open_filter(stun, s)) if s.guess.enabled else None
    try:
        sock, mapped, dependent = await _stun_socket(stun, s, probe=True)
    except BaseException:  # cancelled (an exchange that did not run): the probe ends too
        await _filter_seen(filtering, wait=False)
        raise
    open_ = await _filter_seen(filtering)
    if mapped is None:
        return sock, None, None, None, False
    nat = _nat_kind(mapped, dependent, int(sock.getsockname()[1]))
    if not dependent:
        return sock, mapped, mapped[0], nat, open_
    sock.close()
    fresh = bind_socket("0.0.0.0", 0, dual_stack=False)
    return fresh, (mapped[0], int(fresh.getsockname()[1])), mapped[0], nat, open_


async def _dial_first(
    targets: tuple[Address, ...],
    certhash: str,
    sock: socket.socket,
    bound: float,
    rtt: float,
    kps: KpsSettings,
) -> KpsConnection | None:
    """Dial every candidate at once (the first from the STUN-mapped socket), keep the first
    that completes a pinned handshake within ``bound`` seconds and close the rest.

    Half the round trip through the relay seeds QUIC's RTT estimate (not its 100 ms guess),
    so an Initial lost to the race with the peer's spray is sent again after ~1.5 rtt (QUIC's
    first PTO is three times the seed), well within the bound. The direct path is no longer
    than the relayed one, so the reply to the first Initial is due within ~1 rtt and the resend
    is never early; where the delays are lopsided (the peer's spray leaves its NAT late), a
    whole seed made the resend come at ~3 rtt: the edm-pp host with an eim-apdf client took
    294–311 ms p50 with it, 275–278 ms with half (docs/performance.md)."""
    seed = min(max(rtt / 2, MIN_RTT_SEED), kps.initial_rtt * 10)
    log.debug("punch: dial %d candidates, rtt seed %.1f ms", len(targets), seed * 1000)
    settings = dataclasses.replace(kps, handshake_timeout=bound, initial_rtt=seed)
    started = asyncio.get_running_loop().time()
    tasks = []
    for index, (host, port) in enumerate(targets):
        own = sock if index == 0 else None
        tasks.append(asyncio.ensure_future(dial(host, port, certhash, settings, sock=own)))
    if not tasks:
        sock.close()
        return None
    winner: KpsConnection | None = None
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                winner = await next_done
                log.info(
                    "hole punch: handshake done %.0f ms into the dial (bound %.0f ms)",
                    (asyncio.get_running_loop().time() - started) * 1000,
                    bound * 1000,
                )
                break
            except Exception as exc:  # PinMismatch included: that candidate is not the host
                log.info("hole punch: a candidate failed: %s", exc)
    finally:
        await _stop_others(tasks, winner, "another path won")
    return winner


class ClientStart:
    """The client's STUN work for one exchange, begun before the exchange itself: round 1's
    socket (its mapping, NAT kind and filtering) and a reversed round's listener (its own
    mapping). Started when the client asks the host for an exchange, its round trips overlap
    the host's answer instead of following it. ``punch_as_client`` takes what it uses and
    closes the rest; ``close`` (idempotent) does that for an exchange that never ran."""

    def __init__(self, stun: Address, s: PunchSettings, kps: KpsSettings) -> None:
        self.first: asyncio.Future[
            tuple[socket.socket, Address | None, str | None, str | None, bool]
        ] = asyncio.ensure_future(_first_socket(stun, s))
        self.listener: asyncio.Future[RoundListener] | None = asyncio.ensure_future(
            RoundListener.start(stun, s, kps)
        )
        self._first_taken = False

    async def take_first(
        self,
    ) -> tuple[socket.socket, Address | None, str | None, str | None, bool]:
        """Round 1's socket and what STUN showed (the caller owns the socket)."""
        found = await self.first
        self._first_taken = True
        return found

    def take_listener(self) -> asyncio.Future[RoundListener] | None:
        """The reversed round's listener (the caller owns it), or None if taken already."""
        ready, self.listener = self.listener, None
        return ready

    async def close(self) -> None:
        """Free what was not taken."""
        await _discard_listener(self.take_listener())
        if not self._first_taken:
            self._first_taken = True
            found = await _abandon(self.first)
            if found is not None:
                found[0].close()


async def punch_as_client(
    stream: Stream,
    stun: Address,
    settings: PunchSettings | None = None,
    kps: KpsSettings | None = None,
    budget: GuessBudget | None = None,
    start: ClientStart | None = None,
) -> KpsConnection | None:
    """Run the client's side on ``stream``: a direct ``KpsConnection`` to the host, pinned by
    the certhash the host sent through the session, or None when the host gives up.
    ``budget`` as for ``punch_as_host``; ``start``: STUN work begun ahead (made with the same
    ``stun``, settings and ``kps``; this call owns it and closes what it does not use)."""
    s = settings or PunchSettings()
    budget = budget or GuessBudget()
    kps = kps or KpsSettings()
    # round 1's socket and a reversed round's listener: their STUN round trips run while
    # the first offer travels (or from before the exchange, with ``start``)
    start = start or ClientStart(stun, s, kps)
    sock: socket.socket | None = None
    public_ip: str | None = None
    mapped: Address | None = None
    nat: str | None = None
    open_ = False
    forward_rounds = 0
    first = True
    guessed = False  # at most one guess per exchange
    try:
        for attempt in range(s.attempts):
            last = attempt == s.attempts - 1
            if sock is None:  # each round dials from a fresh socket with a fresh mapping
                if first:
                    log.debug("punch client: exchange starts")
                    sock, mapped, public_ip, nat, open_ = await start.take_first()
                    log.debug("punch client: stun %s %s open=%s", mapped, nat, open_)
                else:
                    sock, mapped, public_ip = await _round_socket(
                        stun, forward_rounds, public_ip, s, nat
                    )
            first = False
            offer = await _read(stream, s.message_timeout)
            if offer.kind == "bye":
                return None
            if offer.kind != "connect" or offer.certhash is None:
                raise PunchError("expected the host's connect with its certhash")
            if offer.reverse:
                log.debug("punch client: reverse offer in")
                ready = start.take_listener() or RoundListener.start(stun, s, kps)
                conn = await _listen_round(stream, offer, ready, s, kps, last, nat, open_)
                if conn is not None:
                    return conn
                continue
            guesser: GuessSockets | None = None
            token: bytes | None = None
            if (
                not guessed
                and s.guess.enabled
                and nat == "edm-random"
                and public_ip is not None
                and offer.nat == "eim"
                and not offer.open  # a host open to new ports takes any dial
                and "guess" in offer.ext
                and offer.public is not None
                and budget.take()
            ):
                guessed = True
                token = os.urandom(TOKEN_BYTES)
                guesser = GuessSockets(s.guess.sockets, offer.public, token)
                log.info(
                    "hole punch: %d guess sockets towards %s",
                    s.guess.sockets,
                    format_addr(offer.public),
                )
            try:
                conn = await _forward_round(
                    stream, offer, sock, mapped, public_ip, nat, open_, token, guesser, s, kps, last
                )
            finally:
                sock = None  # the round owned it
                if guesser is not None:
                    guesser.close()
            forward_rounds += 1
            if conn is not None:
                await _send(stream, PunchMessage("result", ok=True))
                return conn
            # ready before we answer, so the host's timer for the next round is fair
            sock, mapped, public_ip = await _round_socket(stun, forward_rounds, public_ip, s, nat)
            await _send(stream, PunchMessage("result", ok=False))
        await _expect(stream, "bye", "bye", s.message_timeout)
        return None
    finally:
        if sock is not None:
            sock.close()
        await start.close()


async def _forward_round(
    stream: Stream,
    offer: PunchMessage,
    sock: socket.socket,
    mapped: Address | None,
    public_ip: str | None,
    nat: str | None,
    open_: bool,
    token: bytes | None,
    guesser: GuessSockets | None,
    s: PunchSettings,
    kps: KpsSettings,
    last: bool,
) -> KpsConnection | None:
    """The client dials the host's candidates from ``sock`` (which this round owns); with a
    ``guesser``, the host probes its sockets meanwhile and the winner dials too."""
    assert offer.certhash is not None
    try:
        ours = ([mapped] if mapped else []) + _local_candidates(
            sock.getsockname()[1], s.host_candidates
        )
        sent = asyncio.get_running_loop().time()
        await _send(
            stream,
            PunchMessage(
                "connect",
                tuple(ours),
                nat=nat,
                ext=("guess",) if s.guess.enabled else (),
                public=mapped,
                open=open_,
                guess_token=token,
                guess_ip=public_ip if token is not None else None,
            ),
        )
        if guesser is not None:  # while the answer travels: the host probes once it has it
            guesser.open()
        await _expect(stream, "sync", "sync", s.message_timeout)
    except BaseException:
        sock.close()
        raise
    rtt = asyncio.get_running_loop().time() - sent
    bound = s.round_bound(rtt, last)
    attempts = [_dial_first(offer.addrs, offer.certhash, sock, bound, rtt, kps)]
    if guesser is not None:
        assert offer.public is not None
        attempts.append(
            _guess_dial(
                guesser, offer.public, offer.certhash, s, s.round_bound(rtt, last), rtt, kps
            )
        )
    return await _first_connection(attempts)
