"""Token buckets: a per-connection budget of messages and bytes per second."""

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
