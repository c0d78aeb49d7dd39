"""The state interface nodes share, re-exported where the cluster code looks for it (it lives
in ``relay.state`` because the single-process relay's core runs on ``MemoryState`` too)."""

from ..state import (
    Claim,
    ClusterState,
    MemoryState,
    NodeInfo,
    Pin,
    QuotaSnapshot,
    StateUnavailable,
    new_node_id,
    wall_ms,
)

__all__ = [
    "Claim",
    "ClusterState",
    "MemoryState",
    "NodeInfo",
    "Pin",
    "QuotaSnapshot",
    "StateUnavailable",
    "new_node_id",
    "wall_ms",
]
