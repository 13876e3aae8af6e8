"""One ordered publisher per node: it coalesces publishes into broker pipelines.

A single FIFO keeps every connection's messages in order. While the broker is
unreachable, publishes wait in the same bounded buffer and go out, still in order,
when it comes back; past the bound the oldest are dropped and counted.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from bushub.broker import Broker
from bushub.broker.base import PartialPublish

log = logging.getLogger(__name__)

# Called per published message with its channel and how many subscribers got it.
DeliveryCallback = Callable[[str, int], None]
DropCallback = Callable[[str, int], None]

_BATCH_MAX = 512


class Publisher:
    """Feeds the broker from one bounded queue.

    Args:
        broker: Where to publish.
        capacity: Messages held at most (while the broker is slow or away).
        on_published: Called with each message's subscriber count.
        on_dropped: Called with (reason, count) for messages given up on.
        settle: After a failed publish, how long to hold before trying again: the
            failure may be a failover, and subscribers elsewhere need that long to
            move to the new primary, or the retried publishes find nobody there.
    """

    def __init__(
        self,
        broker: Broker,
        capacity: int,
        on_published: DeliveryCallback,
        on_dropped: DropCallback,
        settle: float = 0.0,
    ) -> None:
        self._broker = broker
        self._settle = settle
        self._capacity = capacity
        self._on_published = on_published
        self._on_dropped = on_dropped
        self._pending: deque[tuple[str, bytes]] = deque()
        self._inflight: list[tuple[str, bytes]] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._hold_until = 0.0
        # Readers pause above the high-water mark while the broker is up, so a
        # fast sender meets TCP backpressure instead of overflowing the buffer;
        # overflow (counted drops) is left for when the broker is away.
        self._high_water = max(1, capacity // 2)
        self._room = asyncio.Event()
        self._room.set()

    def close(self) -> None:
        """Count anything still pending as dropped; the owner cancels ``run()`` first."""
        lost = len(self._pending) + len(self._inflight)
        if lost:
            self._on_dropped("shutdown", lost)
            self._pending.clear()
            self._inflight = []

    @property
    def pending(self) -> int:
        """Messages waiting to be published."""
        return len(self._pending) + len(self._inflight)

    @property
    def crowded(self) -> bool:
        """True when a reader should wait for ``room()`` before reading on."""
        return self.pending >= self._high_water and self._broker.up

    async def room(self) -> None:
        """Wait until the buffer is under its high-water mark or the broker is away."""
        while self.crowded:
            self._room.clear()
            # Re-check every half second: the broker may have gone away meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), 0.5)

    def hold(self, seconds: float) -> None:
        """Keep publishes queued for ``seconds`` more (in order, still bounded)."""
        self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    def publish(self, channel: str, data: bytes) -> None:
        """Queue one message; never blocks."""
        if self.pending >= self._capacity:
            if not self._pending:
                self._on_dropped("publish_buffer_full", 1)
                return
            self._pending.popleft()
            self._on_dropped("publish_buffer_full", 1)
        self._pending.append((channel, data))
        self._idle.clear()
        self._wakeup.set()

    async def flushed(self) -> None:
        """Wait until everything queued so far has been handed to the broker."""
        await self._idle.wait()

    async def run(self) -> None:
        """Flush forever; the owner runs this as a task and cancels it."""
        delay = 0.02
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._broker.up or time.monotonic() < self._hold_until:
                # Hold everything until the broker is back and the other nodes
                # have had time to resubscribe: publishing earlier would reach
                # channels nobody listens on yet, and count as undeliverable.
                await asyncio.sleep(0.05)
                continue
            take = min(_BATCH_MAX, len(self._pending))
            self._inflight = [self._pending.popleft() for _ in range(take)]
            try:
                counts = await self._broker.publish_many(self._inflight)
            except PartialPublish as partial:
                # Account for what went out; put only the refused back, in order.
                refused = []
                for item, count in zip(self._inflight, partial.counts, strict=True):
                    if count is None:
                        refused.append(item)
                    else:
                        self._on_published(item[0], count)
                self._pending.extendleft(reversed(refused))
                self._inflight = []
                log.info("publish partly refused (%s); retrying %d", partial, len(refused))
                self.hold(self._settle)
                continue
            except ConnectionError as exc:
                # Back to the head, in order: nothing of the batch is known to be out.
                self._pending.extendleft(reversed(self._inflight))
                self._inflight = []
                log.debug("publish failed (%s); holding %d messages", exc, len(self._pending))
                self.hold(self._settle)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)
                continue
            batch, self._inflight = self._inflight, []
            delay = 0.02
            if self.pending < self._high_water:
                self._room.set()
            for (channel, _), count in zip(batch, counts, strict=True):
                self._on_published(channel, count)
