"""The map server's table, sans-IO: entries with a TTL and a size budget, and waiting gets.

The server shell owns sockets and futures; this class owns the rules: a value limit per entry,
a total byte budget (so the server's memory is bounded), expiry, and a bounded table of parked
gets. Waiters are opaque tokens the shell wakes when ``put`` returns them.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from ..schedule import ADDRESS_SIZE


class TableError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class MapTable:
    max_value: int = 1 << 16
    ttl: float = 3600.0
    max_bytes: int = 256 << 20
    max_waiters: int = 4096
    #: write-once (signed mode): a put at an address holding other bytes is refused (409)
    write_once: bool = False
    entries: dict[bytes, tuple[bytes, float]] = field(default_factory=dict)
    _expiry: list[tuple[float, bytes]] = field(default_factory=list)
    _waiters: dict[bytes, set[Hashable]] = field(default_factory=dict)
    _waiter_count: int = 0
    stored_bytes: int = 0

    def check_put(self, address: bytes, size: int) -> None:
        if len(address) != ADDRESS_SIZE:
            raise TableError(400, f"address must be {ADDRESS_SIZE} bytes")
        if size > self.max_value:
            raise TableError(413, f"value of {size} bytes exceeds the limit of {self.max_value}")
        if size == 0:
            raise TableError(400, "empty values are not stored")

    def put(
        self, address: bytes, value: bytes, now: float, expires: float | None = None
    ) -> list[Hashable]:
        """Store (or overwrite) and return the waiters to wake."""
        self.check_put(address, len(value))
        old = self.entries.get(address)
        if self.write_once and old is not None and old[1] > now:
            if old[0] == value:  # a retransmission: already there, nothing to change
                return []
            raise TableError(409, "the address holds another value (write-once)")
        grow = len(value) - (len(old[0]) if old else 0)
        if grow > 0 and self.stored_bytes + grow > self.max_bytes:
            self.expire(now)
            if self.stored_bytes + grow > self.max_bytes:
                raise TableError(
                    507,
                    f"the store holds {self.stored_bytes} bytes; its budget is {self.max_bytes}",
                )
        when = now + self.ttl if expires is None else expires
        self.entries[address] = (value, when)
        self.stored_bytes += grow
        heapq.heappush(self._expiry, (when, address))
        woken = self._waiters.pop(address, set())
        self._waiter_count -= len(woken)
        return list(woken)

    def get(self, address: bytes, now: float) -> bytes | None:
        entry = self.entries.get(address)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def expire(self, now: float) -> list[bytes]:
        """Drop entries whose TTL passed; returns their addresses."""
        gone: list[bytes] = []
        while self._expiry and self._expiry[0][0] <= now:
            when, address = heapq.heappop(self._expiry)
            entry = self.entries.get(address)
            if entry is not None and entry[1] == when:
                del self.entries[address]
                self.stored_bytes -= len(entry[0])
                gone.append(address)
        return gone

    def add_waiter(self, address: bytes, token: Hashable) -> None:
        if self._waiter_count >= self.max_waiters:
            raise TableError(503, f"{self._waiter_count} gets are already waiting")
        self._waiters.setdefault(address, set()).add(token)
        self._waiter_count += 1

    def remove_waiter(self, address: bytes, token: Hashable) -> None:
        waiters = self._waiters.get(address)
        if waiters is not None and token in waiters:
            waiters.discard(token)
            self._waiter_count -= 1
            if not waiters:
                del self._waiters[address]

    @property
    def waiting(self) -> int:
        return self._waiter_count

    def load(self, rows: Iterable[tuple[bytes, bytes, float]], now: float) -> int:
        """Entries from persistent storage (expired ones are skipped); returns the count."""
        count = 0
        for address, value, expires in rows:
            if expires > now and len(address) == ADDRESS_SIZE:
                self.put(address, value, now, expires)
                count += 1
        return count
