"""Waiting for Redis at start-up.

A node started before its Redis (an orchestrator starting both at once, a Redis
restarting) waits for it, not yet serving (its port is bound only once the start is
done), rather than exiting and leaving a restart loop to whatever runs it. A refusal
(a wrong password, a user without access) stops it at once instead: that is a
setting to fix, not a wait. A signal meanwhile ends the wait (``Hub.abort_start``).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

FIRST_DELAY = 0.1
MOST_DELAY = 2.0

Errors = tuple[type[BaseException], ...]


async def until_reachable(
    step: Callable[[], Awaitable[object]], where: str, unreachable: Errors, refusals: Errors
) -> None:
    """Run ``step`` until it does not fail as ``unreachable``, waiting 0.1 s, then
    twice as long each time up to 2 s, between tries.

    Raises:
        What ``step`` raised, when it is (or was caused by) one of ``refusals``, or is
        not ``unreachable``.
    """
    delay = FIRST_DELAY
    while True:
        try:
            await step()
            return
        except unreachable as exc:
            if refused(exc, refusals):
                raise
            # Rate-limited by the log's filter: one line per 10 s, with a count.
            log.warning("waiting for %s at start-up: %s", where, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, MOST_DELAY)


def refused(exc: BaseException | None, refusals: Errors) -> bool:
    """Whether ``exc`` or what caused it is a refusal (redis-py's cluster client
    reports a refused login as an unreachable cluster, caused by the refusal)."""
    while exc is not None:
        if isinstance(exc, refusals):
            return True
        exc = exc.__cause__
    return False
