"""The many-port guess (sans-IO): what lets an endpoint-independent, address-and-port filtering
NAT meet one that picks a random port per destination (docs/nat.md "Port guessing").

The random side opens ``sockets`` UDP sockets and sends from each to the other side's public
address, so its NAT holds that many random mappings towards it. The other side sends
``probes`` small probes from its one socket to distinct guessed ports of the random side's
public IP; each probe also opens its own filter for that port. When a guess equals one of the
mappings, the probe arrives at that socket, which wins: the QUIC handshake then runs from it.
With ``k`` sockets among ``r`` possible ports, ``n`` distinct guesses all miss with probability
about ``(1 - k/r)^n`` (256 sockets, 2048 guesses, the 64512 ports Linux's ``masquerade random``
picks from: 3e-4).

A probe is ``MAGIC ‖ token ‖ port``: the token came through the sealed Link channel, so a third
party cannot make a socket win (and the QUIC handshake on the winner is pinned by certhash
anyway); the port it was sent to tells the winner its own public mapping.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import random
import struct

__all__ = [
    "GUESS_MAGIC",
    "PORT_RANGE",
    "GuessBudget",
    "GuessSettings",
    "guess_ports",
    "is_probe",
    "miss_probability",
    "probe",
]

GUESS_MAGIC = b"KWG1"
#: the ports Linux's ``masquerade random`` (and most CGNATs) allocate from, measured in the
#: lab: 2560 mappings spread evenly over 1048..65502
PORT_RANGE = (1024, 65535)


@dataclasses.dataclass(frozen=True)
class GuessSettings:
    """Bounds of one guess (``link.direct_guess*``)."""

    #: run a guess round when STUN shows one side random and the other independent
    enabled: bool = True
    #: sockets the random side opens
    sockets: int = 256
    #: distinct ports the other side probes, at most
    probes: int = 2048
    #: probes per second
    rate: float = 8000.0
    #: probes sent at once before the pacing starts: the first hit is expected after ~250
    #: probes (31 ms at 8000/s), which a burst of 256 (16 kB) gets 64 % of the time at once
    burst: int = 256
    #: seconds the random side waits for a probe to arrive
    seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.sockets <= 1024:
            raise ValueError(
                f"guess sockets (link.direct_guess_sockets) must be 1..1024, got {self.sockets}"
            )
        span = PORT_RANGE[1] - PORT_RANGE[0] + 1
        if not 1 <= self.probes <= span:
            raise ValueError(
                f"guess probes (link.direct_guess_probes) must be 1..{span}, got {self.probes}"
            )
        if not 10 <= self.rate <= 100_000:
            raise ValueError(
                f"guess rate (link.direct_guess_rate) must be 10..100000 a second, got {self.rate}"
            )
        if not 0 <= self.burst <= 4096:
            raise ValueError(
                f"guess burst (link.direct_guess_burst) must be 0..4096, got {self.burst}"
            )
        if not 0.1 <= self.seconds <= 30:
            raise ValueError(
                f"guess seconds (link.direct_guess_time) must be 0.1..30, got {self.seconds}"
            )


class GuessBudget:
    """How many more guesses a connection may run (one by default: a guess costs hundreds
    of sockets and thousands of probes, and a pair it failed for once will not change)."""

    def __init__(self, remaining: int = 1) -> None:
        self.remaining = remaining

    def take(self) -> bool:
        """Use one guess; False when none is left."""
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def probe(token: bytes, port: int) -> bytes:
    """The datagram the independent side sends to guessed port ``port``."""
    return GUESS_MAGIC + token + struct.pack("!H", port)


def is_probe(data: bytes, token: bytes) -> int | None:
    """The port a probe carrying ``token`` was sent to, or None for anything else (the token
    compared in constant time)."""
    size = len(GUESS_MAGIC) + len(token)
    if len(data) != size + 2 or not hmac.compare_digest(data[:size], GUESS_MAGIC + token):
        return None
    return int(struct.unpack("!H", data[size:])[0])


def guess_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct ports of ``PORT_RANGE`` in random order. The order need not be
    secret (the token guards a probe, and anyone on the path sees the ports), so the default
    generator is a seeded Mersenne Twister: 2048 ports in ~1.7 ms, SystemRandom took ~5."""
    rng = rng or random.Random(os.urandom(16))
    return rng.sample(range(PORT_RANGE[0], PORT_RANGE[1] + 1), count)


def miss_probability(sockets: int, probes: int) -> float:
    """The chance that ``probes`` distinct guesses all miss ``sockets`` random mappings."""
    span = PORT_RANGE[1] - PORT_RANGE[0] + 1
    p = 1.0
    for i in range(min(probes, span - sockets)):
        p *= (span - sockets - i) / (span - i)
    return p
