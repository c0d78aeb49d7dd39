"""What the sender, the receiver and the recovery of one store stream share.

They are separate objects (each owns its state), but they derive the same keys, use the same
tuning, append to one event queue for the shell and draw jitter from one generator (so a seeded
stream stays reproducible). ``SavedState`` reads a snapshot with the checks each part needs.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .frame import Geometry
from .ops import Event
from .params import Mode, StoreParams
from .schedule import KeySchedule, Role

#: the version of ``StoreCore.snapshot()``'s format
SNAPSHOT_VERSION = 1


@dataclass(eq=False)
class StreamContext:
    """The constants of one stream end, and the queue its events go to."""

    secret: bytes
    role: Role
    params: StoreParams
    mode: Mode
    events: deque[Event] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.keys = KeySchedule.derive(self.secret, self.role)
        self.geometry = Geometry(self.params.value_size)
        self.capacity = self.geometry.payload_capacity
        #: largest value accepted from the store (the peer may use another value size)
        self.max_value = max(self.params.value_size, 1 << 20)
        self.rng = random.Random(self.params.seed)

    @property
    def duplex(self) -> bool:
        return self.mode is Mode.DUPLEX

    @property
    def publisher(self) -> bool:
        """The multicast writer (it reads nothing)."""
        return self.mode is Mode.MULTICAST and self.role is Role.LISTENER

    @property
    def multicast_reader(self) -> bool:
        """A multicast reader (it writes nothing)."""
        return self.mode is Mode.MULTICAST and self.role is Role.DIALER

    def backoff(self, base: float, attempt: int, cap: float) -> float:
        """Exponential backoff with ±20 % jitter, so that retries of many frames spread out."""
        delay: float = min(cap, base * float(2 ** min(attempt, 30)))
        return delay * self.rng.uniform(0.8, 1.2)

    def retry_at(self, now: float, failures: int) -> float:
        """When to retry a store operation that has failed ``failures`` times in a row (from
        ``retry_min``, doubling, at most ``retry_max``)."""
        p = self.params
        return now + self.backoff(p.retry_min, failures - 1, p.retry_max)


class SavedState:
    """Typed access to a snapshot dict; a wrong type raises ``TypeError`` and a missing key
    ``KeyError``, which ``StoreCore.from_snapshot`` reports as a malformed state."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def __getitem__(self, name: str) -> Any:
        return self.state[name]

    def get(self, name: str, default: Any) -> Any:
        return self.state.get(name, default)

    def num(self, name: str, default: int | None = None) -> int:
        value = self.state[name] if default is None else self.state.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} is not an integer")
        return value

    def code(self, name: str, default: int, low: int = 0) -> int:
        """A 32-bit stream code (``low`` = -1: none saved as -1)."""
        value = self.num(name, default)
        if not low <= value <= 0xFFFFFFFF:
            raise ValueError(f"a saved StopSending code is out of range ({name})")
        return value

    def raw(self, name: str) -> bytes:
        return as_bytes(self.state[name], name)


def as_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} is not bytes")
    return value
