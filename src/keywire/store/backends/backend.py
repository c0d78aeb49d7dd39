"""What a store stream needs from a key-value store (reference §5).

A backend stores a value per 32-byte address: puts are atomic and idempotent, gets do not
consume, a get may wait (long-poll) for a put, and values have a known size limit. It may lose
puts silently; the stream's acks and read-backs make up for that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

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

    @abstractmethod
    async def put(self, address: bytes, value: bytes) -> None:
        """Store ``value`` at ``address`` (overwrites); raises ``StoreError`` on failure."""

    @abstractmethod
    async def get(self, address: bytes, wait: float) -> bytes | None:
        """The value at ``address``, waiting up to ``wait`` seconds for one; None if none."""

    async def probe(self) -> None:  # noqa: B027 - a store without a cheap check skips it
        """One cheap request, so a refusal (``StoreRefused``) shows before a stream starts;
        other failures raise ``StoreError`` and are the caller's to ignore or report."""

    async def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections; the store's data stays."""
