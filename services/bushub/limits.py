"""Token buckets: a per-connection budget of messages and bytes per second."""

import math
import time

# The shortest wait ``take_or_wait`` asks for. An event loop's timers fire no sooner
# than their resolution, and uvloop's counts whole milliseconds: a socket over its
# rate by a fraction of a message was told to wait under 1 ms, its sleep returned at
# once, and its frame was tried again, and counted throttled, ~150 times each, the
# node's loop spinning at a full core. In 2 ms even 500 messages/s refill one.
LEAST_WAIT = 0.002
# Frames a socket may send per message of its rate (and as many in a burst) beside
# its messages: pings, pongs, fragments, and frames dropped over the rate or the
# size limit. Every one of them is parsed, so past this budget the socket's reading
# waits; a burst over the rate is dropped as before, a flood is slowed down (one
# socket's flood of such frames was taken at line rate, a core's worth).
EXTRA_FRAMES_PER_MESSAGE = 4


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
        return not self.take_or_wait(amount)

    def take_or_wait(self, amount: float = 1.0) -> float:
        """Spend ``amount`` if the bucket holds it (0.0); else spend nothing and
        return the seconds until it will (infinity when ``amount`` is over the
        burst: it never will)."""
        if self._rate <= 0:
            return 0.0
        # ``_refill()`` inline: twice a relayed message.
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= amount:
            self._tokens -= amount
            return 0.0
        if amount > self._burst:
            return math.inf
        return (amount - self._tokens) / self._rate

    def spend(self, amount: float = 1.0) -> float:
        """Spend ``amount`` whether the bucket holds it or not, going into debt (for
        what was taken already and cannot be refused, only waited for); returns
        ``seconds_until_one()``."""
        if self._rate <= 0:
            return 0.0
        self._refill()
        self._tokens -= amount
        return self._until_one()

    def seconds_until_one(self) -> float:
        """The seconds until the bucket holds one unit (0.0 if it does now)."""
        if self._rate <= 0:
            return 0.0
        self._refill()
        return self._until_one()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def _until_one(self) -> float:
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self._rate

    def give_back(self, amount: float = 1.0) -> None:
        """Return ``amount`` just spent, unused."""
        if self._rate > 0:
            self._tokens += amount


def take_or_wait(messages: TokenBucket, size_bytes: TokenBucket, size: int) -> float:
    """Spend one message and ``size`` bytes if both buckets hold them (0.0); else
    spend nothing and return the seconds until the one short of it will hold it (the
    caller asks again then; infinity: ``size`` is over the bytes' burst, so it never
    will), ``LEAST_WAIT`` at least."""
    wait = messages.take_or_wait(1.0)
    if wait:
        return max(wait, LEAST_WAIT)
    wait = size_bytes.take_or_wait(size)
    if wait:
        messages.give_back(1.0)
        return max(wait, LEAST_WAIT)
    return 0.0
