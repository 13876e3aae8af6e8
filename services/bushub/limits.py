"""Token buckets: a per-connection budget of messages and bytes per second."""

import math
import time


class TokenBucket:
    """Allows ``rate`` units per second with bursts up to ``burst`` units.

    A rate of 0 means unlimited. The burst is at least one unit, so a rate under
    one per second still lets a unit through now and then.
    """

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = rate
        self._burst = burst if burst is not None else max(rate, 1.0)
        self._tokens = self._burst
        self._last = time.monotonic()

    def take(self, amount: float = 1.0) -> bool:
        """Spend ``amount`` if the bucket holds it; False (nothing spent) if not."""
        if self._rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True

    def wait_for(self, amount: float = 1.0) -> float:
        """Seconds until the bucket holds ``amount``: 0.0 when it does now (nothing
        is spent), infinity when ``amount`` is over the burst and never will."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= amount:
            return 0.0
        if amount > self._burst:
            return math.inf
        return (amount - self._tokens) / self._rate

    def spend(self, amount: float = 1.0) -> None:
        """Spend ``amount`` that ``wait_for`` just found in the bucket."""
        if self._rate > 0:
            self._tokens -= amount


def take_or_wait(messages: TokenBucket, size_bytes: TokenBucket, size: int) -> float:
    """Spend one message and ``size`` bytes if both buckets hold them (0.0); else
    spend nothing and return the seconds until both will (infinity: ``size`` is over
    the bytes' burst, so it never will)."""
    wait = max(messages.wait_for(1.0), size_bytes.wait_for(size))
    if not wait:
        messages.spend(1.0)
        size_bytes.spend(size)
    return wait
