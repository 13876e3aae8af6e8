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
            if refusal_in(exc, refusals) is not None:
                raise
            # Rate-limited by the log's filter: one line per 10 s, with a count.
            log.warning("waiting for %s at start-up: %s", where, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, MOST_DELAY)


def refusal_in(exc: BaseException | None, refusals: Errors) -> BaseException | None:
    """The refusal that ``exc`` is or was caused by (redis-py's cluster client reports
    a refused login as an unreachable cluster, caused by the refusal); None if none."""
    while exc is not None:
        if isinstance(exc, refusals):
            return exc
        exc = exc.__cause__
    return None
