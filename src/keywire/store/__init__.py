"""Store streams: a reliable encrypted byte stream over a lossy key-value store.

Katzenpost's key schedule and frames, with a pipelined, acknowledged protocol on top, over
an in-memory store, the HTTP map server (``keywire map-server``) or Redis. See docs/store.md.
"""

from __future__ import annotations

from .adapter import StoreAdapter
from .backends import (
    HttpStore,
    LossyStore,
    MemoryStore,
    RedisStore,
    StoreBackend,
    StoreError,
    StoreFull,
    StoreRefused,
    ValueTooLarge,
)
from .core import StoreCore
from .frame import Frame, FrameError, FrameType, Geometry
from .mapserver import MapServer
from .params import Mode, StoreParams
from .persist import StateError, new_state_key
from .schedule import KeySchedule, Role
from .secret import SecretError, format_secret, generate_secret, parse_secret
from .stream import StoreConnection, StoreStream

__all__ = [
    "Frame",
    "FrameError",
    "FrameType",
    "Geometry",
    "HttpStore",
    "KeySchedule",
    "LossyStore",
    "MapServer",
    "MemoryStore",
    "Mode",
    "RedisStore",
    "Role",
    "SecretError",
    "StateError",
    "StoreAdapter",
    "StoreBackend",
    "StoreConnection",
    "StoreCore",
    "StoreError",
    "StoreFull",
    "StoreParams",
    "StoreRefused",
    "StoreStream",
    "ValueTooLarge",
    "format_secret",
    "generate_secret",
    "new_state_key",
    "parse_secret",
]
