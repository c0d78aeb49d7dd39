"""What a store stream needs from a key-value store (reference §5).

A backend stores a value per 32-byte address: puts are atomic and idempotent, gets do not
consume, a get may wait (long-poll) for a put, and values have a known size limit. It may lose
puts silently; the stream's acks and read-backs make up for that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from ...errors import Code, KeywireError
from ..schedule import ADDRESS_SIZE


class StoreError(KeywireError):
    """A put or get failed at the store (network, refusal, restart); it may be retried."""


class StoreRefused(StoreError):
    """The store refused us, or we refused it, in a way retrying cannot fix (a missing or
    wrong token, an untrusted certificate): the stream fails with ``code`` at once."""

    permanent = True

    def __init__(self, message: str, code: int = Code.PERMISSION_DENIED) -> None:
        self.code = code
        super().__init__(message)


class StoreFull(StoreError):
    """The store refused a put for want of room (a map server's 507, Redis's OOM): a stream
    retries for a while, since entries expire, then fails with this text."""


class ValueTooLarge(StoreError):
    """A value longer than the store accepts: a configuration error, never retried."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"value of {size} bytes exceeds the store's limit of {limit}")


def check_address(address: bytes) -> None:
    if len(address) != ADDRESS_SIZE:
        raise ValueError(f"store address must be {ADDRESS_SIZE} bytes, got {len(address)}")


class StoreBackend(ABC):
    """One store, shared by any number of streams."""

    #: largest value a put accepts
    max_value: int = 1 << 20
    #: text for error messages and logs
    description: str = "store"
    #: puts are signed (docs/store.md "Write capabilities"): frame ``i`` lives at its
    #: direction's blinded Ed25519 key and its value is ``signature || frame``
    signed: bool = False
    #: waiting gets started together cost fewer requests than one by one (one Redis
    #: SUBSCRIBE for all): a stream then starts its read-ahead gets in groups
    read_group: bool = False

    @abstractmethod
    async def put(self, address: bytes, value: bytes) -> None:
        """Store ``value`` at ``address`` (overwrites); raises ``StoreError`` on failure."""

    @abstractmethod
    async def get(self, address: bytes, wait: float) -> bytes | None:
        """The value at ``address``, waiting up to ``wait`` seconds for one; None if none."""

    async def get_ahead(self, address: bytes, wait: float) -> bytes | None:
        """``get`` of a value that is probably not stored yet (a stream reads up to twice its
        window ahead of the peer's puts). Same result; a store on which a waiting get costs a
        read, a subscription and a second read (Redis, NATS) subscribes first and reads once."""
        return await self.get(address, wait)

    async def probe(self) -> None:  # noqa: B027 - a store without a cheap check skips it
        """One cheap request, so a refusal (``StoreRefused``) shows before a stream starts;
        other failures raise ``StoreError`` and are the caller's to ignore or report."""

    async def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections; the store's data stays."""


class WaitingStore(StoreBackend):
    """A store whose waiting get reads, else subscribes to the key's wake-ups and reads
    again until a put arrives (Redis, Redis Cluster, NATS): ``get`` and ``get_ahead`` over
    the store's own ``_read`` and ``_wait``, written once."""

    #: whether a ``get_ahead`` reads before it subscribes (made by the store's ``__init__``)
    _first_read: FirstRead
    #: False: ``get_ahead`` is ``get`` (read, then subscribe and wait)
    subscribe_first = True

    @abstractmethod
    async def _read(self, address: bytes) -> bytes | None:
        """One read of ``address``, no waiting."""

    @abstractmethod
    async def _wait(
        self, address: bytes, wait: float, guess: FirstRead | None = None
    ) -> bytes | None:
        """Subscribe to ``address``'s wake-ups, read, and wait up to ``wait`` seconds for a
        put (``guess`` learns whether the first read found the value)."""

    async def get(self, address: bytes, wait: float) -> bytes | None:
        check_address(address)
        value = await self._read(address)
        if value is not None or wait <= 0:
            return value
        return await self._wait(address, wait)

    async def get_ahead(self, address: bytes, wait: float) -> bytes | None:
        """Subscribe, then read once (not read, subscribe, read again): a stream's reads run
        ahead of the puts, so the read before subscribing mostly finds nothing. A client whose
        such gets mostly find their value at once reads first (``FirstRead``), unless gets
        started together share their SUBSCRIBE and read (``read_group``): then subscribing
        first costs no more than reading first, and needs no guess."""
        if not self.subscribe_first:
            return await self.get(address, wait)
        check_address(address)
        if wait <= 0:
            return await self._read(address)
        if self.read_group:
            return await self._wait(address, wait)
        guess = self._first_read
        if (value := await guess.read_first(lambda: self._read(address))) is not None:
            return value
        return await self._wait(address, wait, guess)


class FirstRead:
    """Whether a ``get_ahead`` should read before it subscribes: not while many of them had
    to wait for the put (a live stream: the read before subscribing is a wasted round trip),
    yes while nearly all found their value at once (a reader catching up on stored frames)."""

    def __init__(self) -> None:
        self._score = 0.0

    @property
    def wanted(self) -> bool:
        return self._score > 0.8

    def found(self, at_once: bool) -> None:
        """A get_ahead's first read found its value (``at_once``) or it had to wait."""
        self._score = 0.8 * self._score + (0.2 if at_once else 0.0)

    async def read_first(self, read: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        """``read()`` when a read first is wanted (and learn from what it found), else None
        without a request: the caller subscribes and waits when this gives None."""
        if not self.wanted:
            return None
        value = await read()
        self.found(value is not None)
        return value
