"""A subscription connection gone silent: Redis stopped, or the network between them
dropping every packet without a reset (a partition, a firewall that drops).

A pub/sub connection only reads, so nothing it writes fails and the kernel never
notices a peer gone without a FIN (keepalive's first probe comes after two hours).
Redis pushes messages on it as they come; once none has come for ``PING_AFTER``
seconds the watch asks for a PING, and once nothing at all (no message, no reply)
has come for ``SILENT_LIMIT`` seconds with it waiting, the connection is taken for
lost: the node says Redis is unreachable, is not ready, and connects again. Anything
read meanwhile counts as life: a node working through a long backlog is slow to see
the pong, not cut off.

Before (a probe with a blackhole between a node and Redis): a node with no traffic
never noticed (ready, ``bushub_redis_up`` 1, 45 s and on), one with traffic after 8.3
s; meanwhile another node took its agents for gone.
"""

import asyncio
import logging
from collections.abc import Awaitable
from typing import NoReturn, Protocol

from redis.exceptions import RedisError

from bushub.broker.base import RefusedHandler

log = logging.getLogger(__name__)

# Seconds without anything read before a PING is asked.
PING_AFTER = 1.0
# Seconds without anything read, a PING waiting, before the connection is lost
# (the publish connection's own bound on a reply owed).
SILENT_LIMIT = 3.0


class Watched(Protocol):
    """A subscription connection as the watch sees it."""

    # Reads so far (any bytes: messages, replies); only ever grows.
    reads: int
    on_refused: RefusedHandler | None

    def ping(self) -> Awaitable[None]:
        """Answered once Redis has run everything written before it."""


async def watch(link: Watched) -> NoReturn:
    """Run beside the connection's service until cancelled.

    Raises:
        TimeoutError: the connection has been silent for ``SILENT_LIMIT`` seconds
            with a PING waiting.
    """
    while True:
        seen = link.reads
        await asyncio.sleep(PING_AFTER)
        if link.reads != seen:
            continue
        await _answered(link)


async def _answered(link: Watched) -> None:
    """Ask for a PING; return once it is answered, or raise once nothing at all has
    been read for ``SILENT_LIMIT`` seconds meanwhile."""
    answer = asyncio.ensure_future(link.ping())
    try:
        while True:
            seen = link.reads
            done, _ = await asyncio.wait({answer}, timeout=SILENT_LIMIT)
            if done:
                break
            if link.reads == seen:
                raise TimeoutError(
                    f"pub/sub connection silent for {SILENT_LIMIT:.1f}s with a PING waiting"
                )
    finally:
        if not answer.done():
            answer.cancel()
    try:
        answer.result()
    except RedisError as refusal:
        # A SUBSCRIBE refused just before the PING answers in its place: reported as
        # one refused with nothing waiting would be.
        log.warning("redis pub/sub connection: %s", refusal)
        if link.on_refused is not None:
            link.on_refused(refusal)
