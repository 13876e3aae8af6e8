"""Publishing operators' traffic (tap events, node reports, notices) beside the relay.

It must never be in the relay's way: its own bounded queue, its own task (started when
something is queued, gone when the queue is empty), and on any broker trouble what it
holds is dropped and counted, not retried. The relay's ``Publisher`` keeps order and
holds messages through outages; none of that is worth anything for a debugging view.
"""

import logging
from collections import deque
from collections.abc import Callable

from bushub.broker import Broker
from bushub.broker.base import PartialPublish
from bushub.ondemand import OnDemandTask

log = logging.getLogger(__name__)

_BATCH = 256


class SidePublisher:
    """A lossy, bounded publisher for operators' views.

    Args:
        broker: Where to publish.
        capacity: Messages queued at most; past it new ones are dropped.
        dropped: Told how many messages were given up on.
    """

    def __init__(self, broker: Broker, capacity: int, dropped: Callable[[int], None]) -> None:
        self._broker = broker
        self._capacity = capacity
        self._dropped = dropped
        self._queue: deque[tuple[str, bytes]] = deque()
        self._task = OnDemandTask(self._run, "side-publish")
        self._closed = False

    def publish(self, channel: str, data: bytes) -> bool:
        """Queue one message; False (and counted) when it was dropped."""
        if self._closed or len(self._queue) >= self._capacity or not self._broker.up:
            self._dropped(1)
            return False
        self._queue.append((channel, data))
        self._task.ensure()
        return True

    async def _run(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            try:
                await self._broker.publish_many(batch)
            except PartialPublish as exc:
                self._dropped(sum(count is None for count in exc.counts))
            except (ConnectionError, OSError, TimeoutError) as exc:
                log.debug("operator traffic not published: %s", exc)
                self._dropped(len(batch))

    async def flushed(self) -> None:
        """Wait until what is queued now has been handed to the broker (or dropped)."""
        await self._task.finished()

    async def close(self) -> None:
        """Drop what is queued and wait for the task to end."""
        self._closed = True
        if self._queue:
            self._dropped(len(self._queue))
            self._queue.clear()
        await self._task.close()

    @property
    def pending(self) -> int:
        """Messages queued (for leak checks)."""
        return len(self._queue)
