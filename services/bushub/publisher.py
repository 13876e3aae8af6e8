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
A refusal about the message's own keys (a key of its target's written by hand with
another type: ``refusals.is_key_refusal``) fails that target's messages and no
other's: it is handed to ``on_key_refused`` and counted, and readiness stays.

A refusal that passes on its own (``refusals.is_retryable``: a slot moving between
Redis Cluster shards, a shard failing over, a dataset loading) parks the refused
messages' channels: their messages, the refused and every later one, wait
``settle`` seconds and go again in order, while other channels' messages go on.
Holding the whole queue instead stalled every agent on the node for as long as
one slot stayed half-migrated (a second per retry round). A whole Redis refusing
(loading, say) parks every channel: the same as a hold.

An acknowledgement is not a delivery: Redis writes a PUBLISH's reply before the
copies to its subscribers when both are due in one turn of its loop, so one killed in
between took the copies with it. Messages on resendable channels that the broker
acknowledged in the last ``RESEND_SECONDS`` before a break (and while it lasts) are
therefore sent again when it is back, ahead of everything newer and marked as resent
(``relayframe.as_resent``), as are those whose connection failed before their reply;
a receiving node that delivered one already drops the copy (recentframes.py).
"""

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from bushub.broker import Broker
from bushub.broker.base import PartialPublish
from bushub.broker.refusals import ErrorKind, classify, is_key_refusal, is_retryable
from bushub.brokerhealth import BrokerHealth
from bushub.lightsync import wait_at_most
from buswire.relayframe import as_resent

log = logging.getLogger(__name__)

# Called per published message with its channel, its data and how many subscribers
# got it.
DeliveryCallback = Callable[[str, bytes, int], None]
DropCallback = Callable[[str, int], None]
# Called with a message's channel, its data and the error reply refusing it for what
# its keys hold.
KeyRefusedCallback = Callable[[str, bytes, object], None]

_BATCH_MAX = 512
# A batch's bytes at most (its first message whatever its size): 512 messages of 1 MiB
# made one write of 512 MiB, copied twice over, when a long queue was flushed.
_BATCH_BYTES = 8 << 20
# The queue's bytes at most, beside ``capacity`` messages: past it the oldest are
# dropped as for a full buffer (10,000 messages of 1 MiB held through a Redis outage
# took a node past 1.5 GB). Summed every ``_BYTES_CHECK_EVERY`` messages queued, not
# kept per message: the queue's every change would have to keep it.
QUEUE_BYTES = 256 << 20
_BYTES_CHECK_EVERY = 64
# Readers pause while the messages held (queued, or handed to Redis and not
# acknowledged) come to this many bytes, as they do at half of ``capacity``
# messages: a fast sender of 64 KiB messages held 5,000 of them unacknowledged
# (a node at 470 MB) while Redis was up and merely behind.
HIGH_WATER_BYTES = 32 << 20
# What the broker acknowledged this long before a break is sent again after it:
# the break is seen within milliseconds of Redis dying; the rest is margin.
RESEND_SECONDS = 1.0
_RECENT_MAX = 4096
_RECENT_BYTES = 8 * 1024 * 1024


class Publisher:
    """Feeds the broker, straight or from one bounded queue.

    Args:
        broker: Where to publish.
        capacity: Messages held at most (queued, or handed to the broker and not
            acknowledged yet). Readers are asked to pause (``crowded``) at half of
            it, or at ``HIGH_WATER_BYTES`` held, while the broker is up.
        on_published: Called with each message's subscriber count.
        on_dropped: Called with (reason, count) for messages given up on.
        settle: After a failed publish, how long to hold before trying again: the
            failure may be a failover, and subscribers elsewhere need that long to
            move to the new primary, or the retried publishes find nobody there.
        health: Told of error replies and of the publish after them that works.
        resend_prefix: The channels whose messages are sent again after a broker
            break start with this (agents' channels: relay frames); None: none.
        on_resent: Called with ("marked", n) for messages marked to go again, and
            ("dropped", n) for those given up on to make room in the buffer.
        on_key_refused: Called for each message refused for what its keys hold;
            without it, such a message is counted with ``on_dropped`` as
            ``broker_refused``.
    """

    def __init__(
        self,
        broker: Broker,
        capacity: int,
        on_published: DeliveryCallback,
        on_dropped: DropCallback,
        settle: float = 0.0,
        health: BrokerHealth | None = None,
        resend_prefix: str | None = None,
        on_resent: Callable[[str, int], None] | None = None,
        on_key_refused: KeyRefusedCallback | None = None,
    ) -> None:
        self._broker = broker
        self._on_key_refused = on_key_refused
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
        # Whether any of them is in doubt (its connection failed: a broker break,
        # which holds every channel) rather than refused with a retryable reply.
        self._returned_in_doubt = False
        # Refused with a retryable reply, and every later message of their channels:
        # in order, until ``_park_until`` (``time.monotonic``).
        self._parked: list[tuple[str, bytes]] = []
        self._parked_channels: set[str] = set()
        self._park_until = 0.0
        # Resendable messages acknowledged lately: (when, (channel, data)), oldest first.
        self._resend_prefix = resend_prefix
        self._on_resent = on_resent
        self._recent: deque[tuple[float, tuple[str, bytes]]] = deque()
        self._recent_bytes = 0
        # Acknowledged before a break (or during it), to go out again ahead of
        # everything else once the broker is back and nothing is in flight; oldest
        # first, and the first to go when the buffer is full (most were delivered).
        self._resend: deque[tuple[str, bytes]] = deque()
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
        # The bytes of every message ``pending`` counts: added as one is taken,
        # subtracted as it is published, refused or dropped.
        self._held = 0
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
            self._parked = []
            self._parked_channels.clear()
            self._resend.clear()
        self._held = 0

    @property
    def pending(self) -> int:
        """Messages not yet known to be published."""
        return (
            len(self._pending)
            + len(self._inflight)
            + len(self._unacked)
            + len(self._returned)
            + len(self._parked)
            + len(self._resend)
        )

    @property
    def held_bytes(self) -> int:
        """The bytes of the messages ``pending`` counts."""
        return self._held

    @property
    def crowded(self) -> bool:
        """True when a reader should wait for ``room()`` before reading on."""
        return not self._has_room() and self._broker.up

    def _has_room(self) -> bool:
        return self.pending < self._high_water and self._held < HIGH_WATER_BYTES

    async def room(self) -> None:
        """Wait until the buffer is under its high-water mark or the broker is away."""
        while self.crowded:
            self._room.clear()
            # Re-check every half second: the broker may have gone away meanwhile.
            await wait_at_most(self._room, 0.5)

    def hold(self, seconds: float) -> None:
        """Keep publishes queued for ``seconds`` more (in order, still bounded)."""
        self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    def publish(self, channel: str, data: bytes) -> None:
        """Publish one message, or queue it; never blocks."""
        if (
            not self._pending
            and not self._inflight
            and not self._returned
            and not self._parked
            and not self._resend
            and len(self._unacked) < self._capacity
            and self._broker.up
            and time.monotonic() >= self._hold_until
            and self._broker.publish_nowait(channel, data, self._done)
        ):
            # Behind only other fast-path messages, on the same connection: in order.
            self._unacked.append((channel, data))
            self._held += len(data)
            self._idle.clear()
            return
        if self.pending >= self._capacity:
            if self._resend:
                self._held -= len(self._resend.popleft()[1])
                self._count_resent("dropped", 1)
            elif not self._pending:
                self._on_dropped("publish_buffer_full", 1)
                return
            else:
                self._held -= len(self._pending.popleft()[1])
                self._on_dropped("publish_buffer_full", 1)
        self._pending.append((channel, data))
        self._held += len(data)
        if len(self._pending) % _BYTES_CHECK_EVERY == 0:
            self._within_bytes()
        self._idle.clear()
        if not self._unacked:
            # Otherwise the last reply (or the loss) of those wakes run().
            self._wakeup.set()

    def _within_bytes(self) -> None:
        """Drop the oldest queued messages while the queue holds more than
        ``QUEUE_BYTES`` (the newest is kept, whatever its size)."""
        pending = self._pending
        held = sum(len(data) for _, data in pending)
        dropped = 0
        while held > QUEUE_BYTES and len(pending) > 1:
            size = len(pending.popleft()[1])
            held -= size
            self._held -= size
            dropped += 1
        if dropped:
            self._on_dropped("publish_buffer_full", dropped)

    def _acked(self, outcome: int | Exception | None) -> None:
        """The broker's outcome for the oldest unacknowledged fast-path message."""
        if self._closed:
            return  # counted as shutdown already
        item = self._unacked.popleft()
        if type(outcome) is int:
            self._held -= len(item[1])
            self._on_published(item[0], item[1], outcome)
            self._remember(item, outcome)
            if self._refused:
                self._accepted()
        elif outcome is not None and is_key_refusal(outcome):
            self._held -= len(item[1])
            self._key_refused(item, outcome)
        elif outcome is not None and not is_retryable(outcome):
            self._held -= len(item[1])
            self._refuse({classify(outcome): (outcome, 1)})
        elif outcome is None:
            # The connection failed first: Redis may have run it.
            self._returned.append(self._in_doubt(item))
            self._returned_in_doubt = True
        else:
            self._health.count("publish", outcome)
            self._returned.append(item)
        if not self._unacked:
            self._settled()
        elif not self._room.is_set() and self._has_room():
            self._room.set()

    def _remember(self, item: tuple[str, bytes], receivers: int) -> None:
        """An acknowledged message: kept a while in case a break follows (per
        message on the hot path: an append, and a trim now and then). One that
        reached no subscriber is not: it was counted undeliverable, and sent again
        after a later break it arrived behind newer messages (a receiver that had
        just resubscribed got it late, out of order)."""
        prefix = self._resend_prefix
        if prefix is None or not receivers or not item[0].startswith(prefix):
            return
        if not self._broker.up:
            # Acknowledged after the break was seen: just as much in doubt.
            self._resend.append(self._in_doubt(item))
            return
        now = time.monotonic()
        recent = self._recent
        recent.append((now, item))
        self._recent_bytes += len(item[1])
        while recent and (
            recent[0][0] < now - RESEND_SECONDS
            or len(recent) > _RECENT_MAX
            or self._recent_bytes > _RECENT_BYTES
        ):
            self._recent_bytes -= len(recent.popleft()[1][1])

    def _in_doubt(self, item: tuple[str, bytes]) -> tuple[str, bytes]:
        prefix = self._resend_prefix
        if prefix is None or not item[0].startswith(prefix):
            return item
        self._count_resent("marked", 1)
        return item[0], as_resent(item[1])

    def broker_lost(self) -> int:
        """The broker broke: what it acknowledged in the last ``RESEND_SECONDS`` goes
        out again (marked) once it is back, ahead of anything newer, as much as the
        buffer has room for (the newest). Returns how many."""
        since = time.monotonic() - RESEND_SECONDS
        again = [item for t, item in self._recent if t >= since]
        self._recent.clear()
        self._recent_bytes = 0
        # Within the buffer's bound, the newest first: Redis died after them.
        room = max(0, self._capacity - self.pending)
        if len(again) > room:
            self._count_resent("dropped", len(again) - room)
            again = again[len(again) - room :]
        if again:
            self._count_resent("marked", len(again))
            self._resend.extend((c, as_resent(d)) for c, d in again)
            self._held += sum(len(d) for _, d in again)
            self._idle.clear()
            self._wakeup.set()
        return len(again)

    def _count_resent(self, outcome: str, count: int) -> None:
        if self._on_resent is not None:
            self._on_resent(outcome, count)

    def _refuse(self, refusals: dict[ErrorKind, tuple[object, int]]) -> None:
        """Drop messages Redis refused for good, by kind: (an error reply, how many)."""
        self._refused = True
        for error, count in refusals.values():
            self._on_dropped("broker_refused", count)
            self._health.refused("publish", error, count)

    def _key_refused(self, item: tuple[str, bytes], error: object) -> None:
        """Drop a message refused for what its own keys hold: counted, readiness kept
        (every other target's messages go through)."""
        self._health.count("publish", error)
        if self._on_key_refused is None:
            self._on_dropped("broker_refused", 1)
        else:
            self._on_key_refused(item[0], item[1], error)

    def _accepted(self) -> None:
        self._refused = False
        self._health.accepted("publish")

    def _settled(self) -> None:
        """No fast-path message is unacknowledged: the queue may go out, led by any
        handed back (the next ``publish()`` must not overtake them)."""
        if self._returned and not self._returned_in_doubt and not self._resend:
            # Refused with retryable replies, every one: their channels wait.
            self._park([(item, False) for item in self._returned])
            self._returned = []
        elif self._returned or self._resend:
            log.info(
                "%d publishes not acknowledged (refused or connection lost) and %d "
                "acknowledged just before a broker break; sending them again in order",
                len(self._returned),
                len(self._resend),
            )
            self._pending.extendleft(reversed(self._returned))
            self._returned = []
            self.hold(self._settle)
        self._returned_in_doubt = False
        if self._pending or self._resend or self._parked:
            self._wakeup.set()
        elif not self._inflight:
            self._idle.set()
        if not self._room.is_set() and self._has_room():
            self._room.set()

    def _park(self, items: list[tuple[tuple[str, bytes], bool]]) -> None:
        """Send ``items`` (each a message and whether it is in doubt) again in order:
        the retryably refused ones (and any after them on the same channel) once
        ``settle`` has passed, with every later message of their channels; those in
        doubt at the head of the queue, holding all (their connection failed: a broker
        break). The log line says which channels wait."""
        head = []
        parked = self._parked_channels
        newly = set()
        for item, doubt in items:
            if doubt and item[0] not in parked:
                head.append(item)
            else:
                if item[0] not in parked:
                    newly.add(item[0])
                    parked.add(item[0])
                self._parked.append(item)
        if newly:
            self._park_until = time.monotonic() + self._settle
            log.info(
                "publishes refused on %d channels (%s...); %d held %.1fs, others go on",
                len(newly),
                next(iter(newly)),
                len(self._parked),
                self._settle,
            )
        if head:
            self._pending.extendleft(reversed(head))
            self.hold(self._settle)

    def _unpark(self) -> None:
        """The parked messages go again, ahead of everything queued."""
        self._pending.extendleft(reversed(self._parked))
        self._parked = []
        self._parked_channels.clear()

    async def flushed(self) -> None:
        """Wait until everything published so far is acknowledged by the broker."""
        await self._idle.wait()

    async def run(self) -> None:
        """Flush the queue forever; the owner runs this as a task and cancels it."""
        delay = 0.02
        while True:
            if self._parked and not self._unacked and time.monotonic() >= self._park_until:
                self._unpark()
            if not (self._pending or self._resend) or self._unacked:
                # Nothing queued; or fast-path messages ahead of the queue are still
                # unacknowledged, and whether they went out decides what goes first
                # (the last reply, or the loss, wakes this through _settled).
                self._wakeup.clear()
                if self._parked and not self._unacked:
                    # Only parked messages: wake when they are due (or sooner).
                    await wait_at_most(self._wakeup, self._park_until - time.monotonic())
                    continue
                if not self._pending and not self._resend and not self._unacked:
                    self._idle.set()
                await self._wakeup.wait()
                continue
            if not self._broker.up or time.monotonic() < self._hold_until:
                # Hold everything until the broker is back and the other nodes
                # have had time to resubscribe: publishing earlier would reach
                # channels nobody listens on yet, and count as undeliverable.
                await asyncio.sleep(0.05)
                continue
            if self._resend:
                # Acknowledged before the break, so older than anything queued.
                self._pending.extendleft(reversed(self._resend))
                self._resend.clear()
            take = min(_BATCH_MAX, len(self._pending))
            # Up to _BATCH_MAX messages and _BATCH_BYTES (the first whatever its size).
            self._inflight = taken = [self._pending.popleft()]
            size = len(taken[0][1])
            while len(taken) < take and size + len(self._pending[0][1]) <= _BATCH_BYTES:
                taken.append(self._pending.popleft())
                size += len(taken[-1][1])
            if self._parked_channels:
                # A parked channel's later messages wait behind its parked ones.
                parked = self._parked_channels
                self._parked += [item for item in self._inflight if item[0] in parked]
                self._inflight = [item for item in self._inflight if item[0] not in parked]
                if not self._inflight:
                    continue
            try:
                counts = await self._broker.publish_many(self._inflight)
            except PartialPublish as partial:
                # Account for what went out; drop what cannot succeed; put only the
                # rest back, in order.
                retry: list[tuple[tuple[str, bytes], bool]] = []  # and whether in doubt
                refusals: dict[ErrorKind, tuple[object, int]] = {}
                outcomes = zip(self._inflight, partial.counts, partial.errors, strict=True)
                for item, count, error in outcomes:
                    if count is not None:
                        self._held -= len(item[1])
                        self._on_published(item[0], item[1], count)
                        self._remember(item, count)
                    elif error is not None and is_key_refusal(error):
                        self._held -= len(item[1])
                        self._key_refused(item, error)
                    elif error is not None and not is_retryable(error):
                        self._held -= len(item[1])
                        kind = classify(error)
                        refusals[kind] = (error, refusals.get(kind, (error, 0))[1] + 1)
                    elif error is None:
                        retry.append((self._in_doubt(item), True))  # no reply: may have run
                    else:
                        self._health.count("publish", error)
                        retry.append((item, False))
                self._inflight = []
                if refusals:
                    self._refuse(refusals)
                elif self._refused and any(c is not None for c in partial.counts):
                    self._accepted()  # some went out, none refused for good
                if retry:
                    self._park(retry)
                if self._has_room():
                    self._room.set()
                continue
            except ConnectionError as exc:
                # Back to the head, in order: nothing of the batch is known to be out
                # (but Redis may have run some of it).
                self._pending.extendleft(reversed([self._in_doubt(i) for i in self._inflight]))
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
            self._held -= sum(len(data) for _, data in batch)
            delay = 0.02
            if self._refused:
                self._accepted()
            if self._has_room():
                self._room.set()
            for item, count in zip(batch, counts, strict=True):
                self._on_published(item[0], item[1], count)
                self._remember(item, count)
