"""Hourly quotas across nodes: a node saves each host's allowance, the next node resumes it.

A host's traffic all passes the node that holds its registration (its dial-backs go there),
so one node at a time charges its quota; the snapshot only has to survive the host moving
(failover, re-register elsewhere), which is what makes the quota cluster-wide.
"""

from __future__ import annotations

from ..bucket import HourlyQuota
from .state import QuotaSnapshot


def snapshot(quota: HourlyQuota, now: float, wall_ms: int) -> QuotaSnapshot:
    quota.allowance.refill(now)
    return QuotaSnapshot(quota.allowance.tokens, quota.throttled, wall_ms)


def restore(
    saved: QuotaSnapshot, hourly_bytes: int, trickle_bps: int, now: float, wall_ms: int
) -> HourlyQuota:
    """The saved allowance, refilled for the time since it was saved."""
    quota = HourlyQuota(hourly_bytes, max(1, trickle_bps), now)
    elapsed = max(0.0, (wall_ms - saved.wall_ms) / 1000)
    bucket = quota.allowance
    bucket.tokens = min(bucket.capacity, saved.tokens + elapsed * bucket.rate)
    quota.throttled = saved.throttled
    quota.wait(now)  # releases the throttle if enough has refilled meanwhile
    return quota
