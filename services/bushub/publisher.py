"""One ordered publisher per node: straight to the broker, or through one queue.

In steady state a message goes straight to the broker's non-blocking path
(``Broker.publish_nowait``) from ``publish()``, and its reply comes back through a
callback: no task step. Whenever that cannot be used (the broker is away, a hold is
on, the fast path refused or lost messages, or anything is queued already) messages
go to a single FIFO that a task coalesces into broker pipelines, and keep doing so
until the queue is empty and no fast-path message is unacknowledged; so messages
reach the broker in the order ``publish()`` was called. While the broker is
unreachable, publishes wait in the same bounded buffer and go out, still in order,
when it comes back; past the bound the oldest are dropped and counted.

A message Redis refuses with an error a retry cannot fix (an ACL without the
command, see ``broker/refusals.py``) is dropped and counted ``broker_refused`` at
once instead: retried at the head of the queue it would stall every later one.
The refusal takes readiness down (``BrokerHealth``) until a publish goes through.
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
from bushub.broker.refusals import ErrorKind, classify, is_retryable
from bushub.brokerhealth import BrokerHealth

log = logging.getLogger(__name__)

# Called per published message with its channel, its data and how many subscribers
# got it.
DeliveryCallback = Callable[[str, bytes, int], None]
DropCallback = Callable[[str, int], None]

_BATCH_MAX = 512


class Publisher:
    """Feeds the broker, straight or from one bounded queue.

    Args:
        broker: Where to publish.
        capacity: Messages held at most (queued, or handed to the broker and not
            acknowledged yet).
        on_published: Called with each message's subscriber count.
        on_dropped: Called with (reason, count) for messages given up on.
        settle: After a failed publish, how long to hold before trying again: the
            failure may be a failover, and subscribers elsewhere need that long to
            move to the new primary, or the retried publishes find nobody there.
        health: Told of error replies and of the publish after them that works.
    """

    def __init__(
        self,
        broker: Broker,
        capacity: int,
        on_published: DeliveryCallback,
        on_dropped: DropCallback,
        settle: float = 0.0,
        health: BrokerHealth | None = None,
    ) -> None:
        self._broker = broker
        self._health = health or BrokerHealth()
        # True from a refusal until a publish goes through (checked per reply).
        self._refused = False
        self._settle = settle
        self._capacity = capacity
        self._on_published = on_published
        self._on_dropped = on_dropped
        self._pending: deque[tuple[str, bytes]] = deque()
        self._inflight: list[tuple[str, bytes]] = []
        # Taken by the broker's fast path, reply not in yet; oldest first.
        self._unacked: deque[tuple[str, bytes]] = deque()
        # Fast-path messages not known to be out (refused, or their connection
        # failed). They wait here until every earlier one is settled, then go
        # back to the head of the queue in order.
        self._returned: list[tuple[str, bytes]] = []
        self._closed = False
        # Bound once: the fast path hands it over with every message.
        self._done = self._acked
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
        """Count anything not known to be published as dropped; the owner cancels
        ``run()`` first. Replies still to come for fast-path messages are ignored."""
        self._closed = True
        lost = self.pending
        if lost:
            self._on_dropped("shutdown", lost)
            self._pending.clear()
            self._inflight = []
            self._unacked.clear()
            self._returned = []

    @property
    def pending(self) -> int:
        """Messages not yet known to be published."""
        return len(self._pending) + len(self._inflight) + len(self._unacked) + len(self._returned)

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
        """Publish one message, or queue it; never blocks."""
        if (
            not self._pending
            and not self._inflight
            and not self._returned
            and len(self._unacked) < self._capacity
            and self._broker.up
            and time.monotonic() >= self._hold_until
            and self._broker.publish_nowait(channel, data, self._done)
        ):
            # Behind only other fast-path messages, on the same connection: in order.
            self._unacked.append((channel, data))
            self._idle.clear()
            return
        if self.pending >= self._capacity:
            if not self._pending:
                self._on_dropped("publish_buffer_full", 1)
                return
            self._pending.popleft()
            self._on_dropped("publish_buffer_full", 1)
        self._pending.append((channel, data))
        self._idle.clear()
        if not self._unacked:
            # Otherwise the last reply (or the loss) of those wakes run().
            self._wakeup.set()

    def _acked(self, outcome: int | Exception | None) -> None:
        """The broker's outcome for the oldest unacknowledged fast-path message."""
        if self._closed:
            return  # counted as shutdown already
        item = self._unacked.popleft()
        if type(outcome) is int:
            self._on_published(item[0], item[1], outcome)
            if self._refused:
                self._accepted()
        elif outcome is not None and not is_retryable(outcome):
            self._refuse({classify(outcome): (outcome, 1)})
        else:
            if outcome is not None:
                self._health.count("publish", outcome)
            self._returned.append(item)
        if not self._unacked:
            self._settled()
        elif not self._room.is_set() and self.pending < self._high_water:
            self._room.set()

    def _refuse(self, refusals: dict[ErrorKind, tuple[object, int]]) -> None:
        """Drop messages Redis refused for good, by kind: (an error reply, how many)."""
        self._refused = True
        for error, count in refusals.values():
            self._on_dropped("broker_refused", count)
            self._health.refused("publish", error, count)

    def _accepted(self) -> None:
        self._refused = False
        self._health.accepted("publish")

    def _settled(self) -> None:
        """No fast-path message is unacknowledged: the queue may go out, led by any
        handed back (the next ``publish()`` must not overtake them)."""
        if self._returned:
            log.info(
                "%d publishes not acknowledged (refused or connection lost); retrying in order",
                len(self._returned),
            )
            self._pending.extendleft(reversed(self._returned))
            self._returned = []
            self.hold(self._settle)
        if self._pending:
            self._wakeup.set()
        elif not self._inflight:
            self._idle.set()
        if not self._room.is_set() and self.pending < self._high_water:
            self._room.set()

    async def flushed(self) -> None:
        """Wait until everything published so far is acknowledged by the broker."""
        await self._idle.wait()

    async def run(self) -> None:
        """Flush the queue forever; the owner runs this as a task and cancels it."""
        delay = 0.02
        while True:
            if not self._pending or self._unacked:
                # Nothing queued; or fast-path messages ahead of the queue are still
                # unacknowledged, and whether they went out decides what goes first
                # (the last reply, or the loss, wakes this through _settled).
                self._wakeup.clear()
                if not self._pending and not self._unacked:
                    self._idle.set()
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
                # Account for what went out; drop what cannot succeed; put only the
                # rest back, in order.
                retry = []
                refusals: dict[ErrorKind, tuple[object, int]] = {}
                outcomes = zip(self._inflight, partial.counts, partial.errors, strict=True)
                for item, count, error in outcomes:
                    if count is not None:
                        self._on_published(item[0], item[1], count)
                    elif error is not None and not is_retryable(error):
                        kind = classify(error)
                        refusals[kind] = (error, refusals.get(kind, (error, 0))[1] + 1)
                    else:
                        if error is not None:
                            self._health.count("publish", error)
                        retry.append(item)
                self._inflight = []
                if refusals:
                    self._refuse(refusals)
                elif self._refused and any(c is not None for c in partial.counts):
                    self._accepted()  # some went out, none refused for good
                if retry:
                    self._pending.extendleft(reversed(retry))
                    log.info("publish partly refused (%s); retrying %d", partial, len(retry))
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
            except BaseException:
                # Cancelled, or a failure nobody foresaw: the batch goes back to the
                # head, so a restarted run() sends it and close() counts it.
                self._pending.extendleft(reversed(self._inflight))
                self._inflight = []
                raise
            batch, self._inflight = self._inflight, []
            delay = 0.02
            if self._refused:
                self._accepted()
            if self.pending < self._high_water:
                self._room.set()
            for (channel, data), count in zip(batch, counts, strict=True):
                self._on_published(channel, data, count)
