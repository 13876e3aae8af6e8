"""When a reconnecting proxy dials again, how long it waits, and when it gives up.

Pure logic: how a socket or a handshake ended (`Disconnect`), which ends are worth a
retry and which are a definite refusal, the jittered exponential backoff and the
give-up limits (`ReconnectPolicy`). `busclient.reconnecting` re-exports all of it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

# Close codes after which the same URL is worth dialling again: a normal or going-away
# close the proxy did not ask for (an idle timeout, a load balancer restarting), no
# close frame at all (1005, 1006: a dropped connection, a killed node), a server error
# (1011), a draining node (1012), an overloaded or not-ready node (1013), a bad gateway
# (1014), the hub's slow-consumer cut (4008), after which this side can keep up again,
# and its keepalive timeout (4009: this side was silent, e.g. a paused process).
RETRY_CLOSE_CODES: frozenset[int] = frozenset(
    {1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014, 4008, 4009}
)
# Close codes that are a definite answer: the protocol or the data is wrong (1002,
# 1003, 1007, 1009, 1010), the connection parameters are refused (1008), TLS failed
# (1015), a newer connection took this agent name over (4001), the peer is gone (4002).
# Other codes in 3000-4999 (application-defined) are treated the same way.
GIVE_UP_CLOSE_CODES: frozenset[int] = frozenset(
    {1002, 1003, 1007, 1008, 1009, 1010, 1015, 4001, 4002}
)
# HTTP statuses of a refused handshake that are worth a retry; every other 4xx (401
# unauthorized, 403 forbidden, 404...) is a definite refusal, every 5xx is retried.
RETRY_HTTP_STATUSES: frozenset[int] = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Disconnect:
    """How a socket ended, or how a handshake failed.

    Exactly one of ``code`` (an open socket ended), ``status`` (the server answered the
    handshake with an HTTP status instead of an upgrade) or ``error`` (the handshake
    failed on the network: refused, reset, timed out) is set.
    """

    code: int | None = None
    status: int | None = None
    error: str | None = None
    reason: str = ""
    local: bool = False  # the proxy closed the socket itself (stop, cleanup)
    fatal: bool = False  # a handshake that can never succeed (a malformed URL)
    # Seconds the server asked for (``Retry-After`` on a refused handshake).
    retry_after: float | None = None

    def describe(self) -> str:
        """A short human-readable account, for logs."""
        if self.code is not None:
            text = f"close {self.code}"
            return f"{text} ({self.reason})" if self.reason else text
        if self.status is not None:
            if self.retry_after is not None:
                return f"HTTP {self.status}, retry after {self.retry_after:g}s"
            return f"HTTP {self.status}"
        return f"handshake failed: {self.error or 'unknown error'}"


@dataclass(frozen=True)
class Decision:
    """What to do after a disconnect: dial again after ``delay`` seconds, or give up."""

    retry: bool
    reason: str
    delay: float = 0.0


@dataclass(frozen=True)
class ReconnectPolicy:
    """When to reconnect, how long to wait, and when to stop trying.

    Backoff: the n-th attempt of an outage waits
    ``min(max_delay, initial_delay * multiplier ** (n - 1))`` scaled down by a random
    factor in ``(1 - jitter, 1]``; ``jitter=1`` is "full jitter", ``0`` none. Clients
    closed together by a draining node so spread their reconnects instead of arriving
    at the load balancer in one burst.

    A refused handshake that says ``Retry-After`` (seconds) waits at least that long,
    up to half as long again, and never past ``max_delay``.

    Limits: an outage is given up after ``max_attempts`` failed attempts or
    ``max_elapsed`` seconds, whichever comes first (``None`` disables a limit); with a
    session, no sooner than the hub's resume window (it keeps the session that long).
    An outage ends only when a connection has stayed open for ``stable_after`` seconds, so
    a node that accepts and at once closes again cannot keep a client looping forever.
    """

    initial_delay: float = 0.2
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None
    max_elapsed: float | None = 60.0
    stable_after: float = 5.0
    retry_codes: frozenset[int] = RETRY_CLOSE_CODES
    give_up_codes: frozenset[int] = GIVE_UP_CLOSE_CODES
    retry_statuses: frozenset[int] = RETRY_HTTP_STATUSES

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 <= initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError("max_elapsed must be >= 0")
        if self.retry_codes & self.give_up_codes:
            raise ValueError("a close code cannot be both retried and given up on")

    def classify(self, disconnect: Disconnect) -> tuple[bool, str]:
        """Whether this end is worth another attempt, and why (limits aside)."""
        what = disconnect.describe()
        if disconnect.local:
            return False, f"closed by the proxy ({what})"
        if disconnect.fatal:
            return False, f"cannot connect ({what})"
        status = disconnect.status
        if status is not None:
            if status in self.retry_statuses or 500 <= status <= 599:
                return True, f"server unavailable ({what})"
            return False, f"refused ({what})"
        code = disconnect.code
        if code is not None:
            if code in self.give_up_codes:
                return False, f"refused ({what})"
            if code in self.retry_codes:
                return True, f"recoverable ({what})"
            if 3000 <= code <= 4999:
                return False, f"refused ({what})"
            return True, f"recoverable ({what})"
        return True, f"unreachable ({what})"

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnect attempt number ``attempt`` (from 1)."""
        exponent = max(0, attempt - 1)
        # Capped before the power can overflow a float on a very long outage.
        ceiling = self.initial_delay
        for _ in range(exponent):
            ceiling *= self.multiplier
            if ceiling >= self.max_delay:
                break
        ceiling = min(self.max_delay, ceiling)
        return ceiling * (1.0 - self.jitter * rng.random())

    def decide(
        self, disconnect: Disconnect, attempt: int, elapsed: float, rng: random.Random
    ) -> Decision:
        """Retry or give up before attempt number ``attempt`` of an outage.

        Args:
            disconnect: How the last socket or handshake ended.
            attempt: The attempt about to be made, counted from 1 within the outage.
            elapsed: Seconds since the outage began.
            rng: The source of jitter.
        """
        retry, why = self.classify(disconnect)
        if not retry:
            return Decision(False, why)
        if self.max_attempts is not None and attempt > self.max_attempts:
            return Decision(False, f"gave up after {self.max_attempts} attempts; last: {why}")
        if self.max_elapsed is not None and elapsed >= self.max_elapsed:
            return Decision(False, f"gave up after {elapsed:.1f}s; last: {why}")
        wait = self.delay(attempt, rng)
        if disconnect.retry_after is not None:
            # The server's word, spread over half as long again (clients it refused
            # together do not come back together), at most max_delay.
            asked = disconnect.retry_after * (1.0 + 0.5 * rng.random())
            wait = min(self.max_delay, max(wait, asked))
        if self.max_elapsed is not None:
            wait = min(wait, self.max_elapsed - elapsed)
        return Decision(True, why, max(0.0, wait))


def merge_codes(
    base: frozenset[int], add: Iterable[int] = (), remove: Iterable[int] = ()
) -> frozenset[int]:
    """``base`` with codes added and removed, for building a policy's code sets."""
    return (base | frozenset(add)) - frozenset(remove)


__all__ = [
    "GIVE_UP_CLOSE_CODES",
    "RETRY_CLOSE_CODES",
    "RETRY_HTTP_STATUSES",
    "Decision",
    "Disconnect",
    "ReconnectPolicy",
    "merge_codes",
]
