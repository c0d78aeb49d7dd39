"""The key-value stores a store stream runs over: the abstract backend and its implementations
(in memory, the HTTP map server's client, Redis), apart from the protocol that uses them."""

from __future__ import annotations

from ..schedule import ADDRESS_SIZE
from .backend import StoreBackend, StoreError, StoreFull, StoreRefused, ValueTooLarge, check_address
from .mapclient import HttpStore
from .memory import LossyStore, MemoryStore
from .redisstore import RedisStore

__all__ = [
    "ADDRESS_SIZE",
    "HttpStore",
    "LossyStore",
    "MemoryStore",
    "RedisStore",
    "StoreBackend",
    "StoreError",
    "StoreFull",
    "StoreRefused",
    "ValueTooLarge",
    "check_address",
]
