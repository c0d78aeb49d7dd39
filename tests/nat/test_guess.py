"""The many-port guess: an endpoint-independent, address-and-port filtering NAT meets one that
picks random ports, and the pair still goes direct (docs/nat.md "Port guessing")."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keywire.nat.guess import GuessSettings, guess_ports, is_probe, miss_probability, probe
from keywire.nat.guessio import GuessSockets, send_probes
from keywire.nat.holepunch import PunchError, PunchMessage, decode_message, encode_message
from keywire.nat.punch import PunchSettings

from .lab import Lab
from .test_punch import PAYLOAD, run_pair

DEFAULTS = PunchSettings()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    ("host_preset", "client_preset"), [("eim-apdf", "edm-random"), ("edm-random", "eim-apdf")]
)
def test_a_random_side_meets_an_address_and_port_filtering_one_directly(
    lab: Lab, tmp_path: Path, host_preset: str, client_preset: str
) -> None:
    """Either way round, with the default settings: the random side's 256 sockets, the other
    side's probes, the first socket a probe reaches dials; afterwards no socket is left open
    (the guess sockets of the side that lost, the probes' side, the winner with its
    connection)."""
    before = _fds()
    outcome = run_pair(lab, host_preset, client_preset, tmp_path, settings=DEFAULTS)
    print(f"host {host_preset} <- client {client_preset}: {outcome.seconds * 1000:.0f} ms")
    assert outcome.direct and outcome.direct_echo == PAYLOAD, outcome
    assert outcome.host_says is True and outcome.host_direct_conns >= 1
    assert outcome.relayed_echo == b"over the relay"
    assert outcome.seconds < 3.0, outcome.seconds
    lab.close()  # the namespaces' loops and everything they held
    deadline = time.monotonic() + 5
    while _fds() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _fds() <= before + 2, (before, _fds())  # not the 256 guess sockets


def test_without_the_guess_that_pair_stays_relayed(lab: Lab, tmp_path: Path) -> None:
    """The guess is what makes the difference (and ``link.direct_guess = false`` turns it
    off): an eim-apdf host and an edm-random client without it end on the relay."""
    off = PunchSettings(guess=GuessSettings(enabled=False))
    outcome = run_pair(lab, "eim-apdf", "edm-random", tmp_path, settings=off)
    assert not outcome.direct and outcome.host_says is False
    assert outcome.relayed_echo == b"over the relay"


async def test_a_spoofed_probe_does_not_win_and_a_real_one_does() -> None:
    """Real sockets on loopback: probes with a wrong token, or with the right token from
    another address, reach the guess sockets and are refused; the right one from the
    expected address wins that very socket; every other socket is closed afterwards."""
    async with asyncio.timeout(10):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        stranger.bind(("127.0.0.1", 0))
        token = os.urandom(16)
        before = _fds()
        try:
            with GuessSockets(32, peer.getsockname(), token) as guesser:
                assert _fds() == before + 32 + 0  # the 32 sockets (readers use no fd)
                ports = [s.getsockname()[1] for s in guesser.sockets]
                for _ in ports:  # each socket's opening datagram arrived at the peer
                    peer.settimeout(1)
                    peer.recvfrom(64)
                for port in ports:
                    peer.sendto(probe(os.urandom(16), port), ("127.0.0.1", port))  # wrong token
                    stranger.sendto(probe(token, port), ("127.0.0.1", port))  # wrong sender
                    peer.sendto(probe(token, port)[:-1], ("127.0.0.1", port))  # cut short
                assert await guesser.wait(0.3) is None
                assert guesser.rejected == 96
                peer.sendto(probe(token, 4242), ("127.0.0.1", ports[5]))
                won = await guesser.wait(1.0)
                assert won is guesser.sockets[5] and guesser.mapped_port == 4242
                guesser.take(won)
            assert _fds() == before + 1  # only the winner, which the caller now owns
            won.close()
            assert _fds() == before
        finally:
            peer.close()
            stranger.close()


async def test_probes_are_paced_distinct_and_carry_the_token() -> None:
    sent: list[tuple[bytes, tuple[str, int]]] = []
    s = GuessSettings(probes=400, rate=4000.0, burst=0)
    started = time.monotonic()
    count = await send_probes(lambda d, a: sent.append((d, a)), "198.51.100.7", b"t" * 16, s)
    took = time.monotonic() - started
    assert count == 400 and len({a for _, a in sent}) == 400
    assert all(is_probe(d, b"t" * 16) == a[1] and a[0] == "198.51.100.7" for d, a in sent)
    assert 0.07 <= took < 0.5, took  # 400 at 4000/s: 0.1 s
    assert all(1024 <= p <= 65535 for p in guess_ports(5000))


async def test_a_burst_goes_out_at_once_and_the_rest_is_paced() -> None:
    """The first ``burst`` probes leave before the first pause; the rest keep the rate."""
    stamps: list[float] = []
    s = GuessSettings(probes=600, rate=4000.0, burst=200)
    started = time.monotonic()
    count = await send_probes(
        lambda d, a: stamps.append(time.monotonic()), "198.51.100.7", b"t" * 16, s
    )
    took = time.monotonic() - started
    assert count == 600 and len(stamps) == 600
    assert stamps[199] - started < 0.02  # the burst: no pause inside it
    assert stamps[200] - started >= 0.008  # then 40 every 10 ms
    assert 0.08 <= took < 0.5, took  # the other 400 at 4000/s: 0.1 s
    with pytest.raises(ValueError, match="guess burst"):
        GuessSettings(burst=-1)


def test_the_default_guess_rarely_misses() -> None:
    assert miss_probability(256, 2048) < 1e-3
    assert miss_probability(256, 1) == pytest.approx(1 - 256 / 64512)
    with pytest.raises(ValueError, match="guess sockets"):
        GuessSettings(sockets=0)
    with pytest.raises(ValueError, match="guess probes"):
        GuessSettings(probes=70000)


def test_the_guess_fields_round_trip_and_bad_ones_are_refused() -> None:
    token = os.urandom(16)
    connect = PunchMessage(
        "connect",
        (("198.51.100.11", 4000),),
        nat="edm-random",
        ext=("guess",),
        public=("198.51.100.11", 4000),
        guess_token=token,
        guess_ip="198.51.100.11",
    )
    assert decode_message(encode_message(connect)[2:]) == connect
    sync = PunchMessage("sync", guess_token=token, guess_ip="198.51.100.12")
    assert decode_message(encode_message(sync)[2:]) == sync
    result = PunchMessage("result", ok=True, via=("198.51.100.12", 4242))
    assert decode_message(encode_message(result)[2:]) == result
    # what an older peer sends still decodes, with nothing asked of this side
    old = decode_message(b'{"t":"connect","v":1,"addrs":[]}')
    assert old.nat is None and old.ext == () and old.guess_token is None
    assert decode_message(b'{"t":"connect","v":1,"addrs":[],"nat":"cgnat-9"}').nat is None
    for bad, why in [
        (b'{"t":"sync","guess":[]}', "object"),
        (b'{"t":"sync","guess":{"token":"ab","ip":"1.2.3.4"}}', "16 bytes"),
        (b'{"t":"sync","guess":{"token":"' + b"zz" * 16 + b'","ip":"1.2.3.4"}}', "hex"),
        (b'{"t":"sync","guess":{"token":"' + b"00" * 16 + b'","ip":"nope"}}', "IP"),
        (b'{"t":"connect","v":1,"addrs":[],"ext":"guess"}', "list of names"),
        (b'{"t":"connect","v":1,"addrs":[],"public":"1.2.3.4"}', "not IP:PORT"),
    ]:
        with pytest.raises(PunchError, match=why):
            decode_message(bad)


def test_out_of_descriptors_the_guess_runs_with_fewer_sockets() -> None:
    """A process limited to 64 descriptors asks for 256 guess sockets: it gets what the limit
    allows, no error, and closes them all (run in a child, so the limit stays there)."""
    code = """
import asyncio, os, resource
from keywire.nat.guessio import GuessSockets
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
async def main():
    before = len(os.listdir("/proc/self/fd"))
    with GuessSockets(256, ("127.0.0.1", 9), os.urandom(16)) as g:
        opened = len(g.sockets)
    print(opened, before, len(os.listdir("/proc/self/fd")))
asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    opened, before, after = (int(x) for x in out)
    assert 0 < opened < 64 and after == before
