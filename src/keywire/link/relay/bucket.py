"""Rate limiting without dropping: a debt-charged token bucket and the per-host hourly quota.

Both are pure arithmetic over an injected ``now`` so the relay's limits can be tested by moving
a fake clock instead of sleeping.
"""

from __future__ import annotations


class DebtBucket:
    """Tokens refill at ``rate`` per second up to ``capacity``; a send may drive them negative.

    The sender is not refused: it sends, and waits ``wait(now)`` before the next frame, so a
    frame larger than the burst still passes, paced, and nothing is ever dropped.
    """

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def charge(self, amount: float, now: float) -> None:
        self.refill(now)
        self.tokens -= amount

    def wait(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 if it is not in debt)."""
        self.refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def cover_up_to(self, amount: float, now: float) -> float:
        """Take up to ``amount`` tokens without going below zero; returns what was taken."""
        self.refill(now)
        taken = max(0.0, min(amount, self.tokens))
        self.tokens -= taken
        return taken

    def fraction_used(self, now: float) -> float:
        self.refill(now)
        return min(1.0, max(0.0, 1.0 - self.tokens / self.capacity))


class HourlyQuota:
    """A rolling hourly byte allowance for one host address, with a trickle floor.

    The allowance refills continuously (``hourly_bytes`` per hour). While it lasts, bytes pass
    at the link's normal rate. Once spent, the host is *throttled*: its bytes pass at exactly
    the trickle rate and are not charged to the allowance, so the allowance can refill; it is
    released once the allowance is back to ``recover_fraction`` of the hour. While throttled
    the throughput is the trickle rate, not trickle plus refill, which is what makes the floor
    a floor (Link added the two). Keyed by host address, it survives new links and reconnects.
    """

    __slots__ = ("allowance", "last_used", "recover_fraction", "throttled", "trickle")

    def __init__(
        self, hourly_bytes: int, trickle_bps: int, now: float, recover_fraction: float = 0.1
    ) -> None:
        self.allowance = DebtBucket(hourly_bytes / 3600.0, float(hourly_bytes), now)
        self.trickle = DebtBucket(float(trickle_bps), 2.0 * trickle_bps, now)
        self.throttled = False
        self.recover_fraction = recover_fraction
        self.last_used = now

    def charge(self, amount: int, now: float) -> None:
        self.last_used = now
        self._update(now)
        if self.throttled:
            self.trickle.charge(amount, now)
            return
        self.allowance.charge(amount, now)
        if self.allowance.tokens <= 0:
            self.throttled = True
            self.trickle = DebtBucket(self.trickle.rate, self.trickle.capacity, now)

    def _update(self, now: float) -> None:
        self.allowance.refill(now)
        if self.throttled and (
            self.allowance.tokens >= self.recover_fraction * self.allowance.capacity
        ):
            self.throttled = False

    def wait(self, now: float) -> float:
        self._update(now)
        return self.trickle.wait(now) if self.throttled else 0.0

    def fraction_used(self, now: float) -> float:
        self._update(now)
        return 1.0 if self.throttled else self.allowance.fraction_used(now)
