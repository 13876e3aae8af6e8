"""The subscription connection a broker keeps open for its channels, for its life.

One loop for the single-Redis broker and for each Redis Cluster shard: connect,
subscribe every channel wanted, confirm Redis has run it, report the connection
up, wait for its loss, report it down, back off (jittered, doubling) and start
again. A refused login or command is logged as such, apart from an outage: it is
the operator's to mend, and what Redis said tells them how.

The loop holds the channel set; subscribing and unsubscribing go through it, so a
channel is written on the live connection or in the next one's snapshot, never
neither.
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from bushub.broker import liveness
from bushub.broker.base import MessageHandler, RefusedHandler
from bushub.broker.respconn import ReplyError

log = logging.getLogger(__name__)

# Bound on Redis running the SUBSCRIBEs of a new connection.
SUBSCRIBE_SECONDS = 5.0
# First wait before reconnecting; it doubles up to the listener's backoff_max.
BACKOFF_FIRST = 0.05

# Every way a connection attempt or a live connection fails: unreachable (OSError
# and the builtin ConnectionError, timeouts, redis-py's network errors) or refused
# (an error reply, raw or as redis-py raises it).
FAILURES = (OSError, asyncio.TimeoutError, RedisError)
REFUSALS = (ReplyError, AuthenticationError, NoPermissionError)


class Link(Protocol):
    """A subscription connection as the loop drives it (subscriber.py's raw one,
    or redis-py's PubSub behind redispubsub.py)."""

    on_message: MessageHandler
    on_refused: RefusedHandler | None
    # Reads so far (messages and replies): what tells a silent connection (liveness).
    reads: int

    def subscribe(self, channels: Collection[str]) -> None:
        """Subscribe ``channels``, in order with every other write."""

    def unsubscribe(self, channels: Collection[str]) -> None:
        """Unsubscribe ``channels``."""

    async def written(self) -> None:
        """Return once every subscribe and unsubscribe asked for is written (Redis
        runs them before anything sent on another connection after that)."""

    async def ping(self) -> None:
        """Return once Redis has taken every subscription written before it."""

    async def serve(self) -> None:
        """Deliver messages until the connection ends; raise why it did."""

    async def aclose(self) -> None:
        """Close, and wait (bounded) until closed."""


class Listener:
    """Keeps one subscription connection open while there are channels to hear.

    Args:
        label: Names the connection in log lines ("redis", "shard host:port").
        connect: Opens a new connection (raising one of FAILURES if it cannot).
        on_up: Awaited once every channel is subscribed on a new connection; True
            when an earlier one was lost (Redis may have restarted meanwhile).
        on_down: Called with why a connection failed, or could not be made.
        backoff_max: Longest wait between attempts, seconds.
    """

    def __init__(
        self,
        label: str,
        connect: Callable[[], Awaitable[Link]],
        *,
        on_up: Callable[[bool], Awaitable[None]],
        on_down: Callable[[BaseException], None],
        backoff_max: float,
    ) -> None:
        self.label = label
        self.channels: set[str] = set()
        # The live connection, once its snapshot is written; None between them.
        self.link: Link | None = None
        self._connect = connect
        self._on_up = on_up
        self._on_down = on_down
        self._backoff_max = backoff_max
        self._changed = asyncio.Event()

    def subscribe(self, channels: Collection[str]) -> None:
        new = [c for c in channels if c not in self.channels]
        if not new:
            return
        self.channels.update(new)
        if self.link is not None:
            self.link.subscribe(new)
        self._changed.set()

    def forget(self, channels: Collection[str]) -> None:
        """Take channels Redis unsubscribed on its own out of the set, writing nothing:
        a later ``subscribe`` of them, on this listener or another, asks again."""
        self.channels.difference_update(channels)

    def unsubscribe(self, channels: Collection[str]) -> None:
        gone = [c for c in channels if c in self.channels]
        if not gone:
            return
        self.channels.difference_update(gone)
        if self.link is not None:
            self.link.unsubscribe(gone)

    async def written(self) -> None:
        """Return once the live connection has written every subscription asked of it
        (at once without one: the next connection subscribes them all)."""
        if self.link is not None:
            await self.link.written()

    async def resubscribe(self) -> None:
        """Subscribe every channel again on the live connection and wait until Redis has
        taken them (a channel held already is confirmed again); at once without one.

        Raises:
            RedisError: Redis refused them (NOPERM...).
            ConnectionError, TimeoutError: the connection failed or did not answer.
        """
        if self.link is not None:
            await self._subscribe_all(self.link)

    def _subscribe_all(self, link: Link) -> Awaitable[None]:
        """Write SUBSCRIBE for every channel on ``link`` and a PING after them, now;
        awaited, the PING's answer within SUBSCRIBE_SECONDS."""
        link.subscribe(tuple(self.channels))
        return _answered(link, SUBSCRIBE_SECONDS)

    async def run(self) -> None:
        """Run until cancelled."""
        delay = BACKOFF_FIRST
        again = False
        # Connections made so far: the lines of one outage share it as their rate-limit
        # key, so its retries are limited but the next outage, however soon, is told.
        connected = 0
        while True:
            if not self.channels:
                # Nothing to hear: no connection until there is.
                self._changed.clear()
                await self._changed.wait()
                continue
            link: Link | None = None
            failure: BaseException | None = None
            try:
                link = await self._connect()
                # The snapshot written and the connection made current with no
                # await between: a subscribe() before this is in the snapshot, one
                # after writes on this connection itself.
                subscribed = self._subscribe_all(link)
                self.link = link
                # Readiness then means subscribed, not just connected.
                await subscribed
                if again:
                    log.warning(
                        "%s reachable again; resubscribed %d channels",
                        self.label,
                        len(self.channels),
                        extra={"rate_key": (self.label, connected)},
                    )
                connected += 1
                await self._on_up(again)
                again = True
                delay = BACKOFF_FIRST
                # On the raw connection messages are delivered from the read
                # callback, and this wakes only when the connection ends (Redis died
                # or cut off a subscriber past its output-buffer limit; a socket
                # error) or goes silent (a partition: no reset ever comes).
                await _served(link)
            except FAILURES as exc:
                failure = exc
            finally:
                self.link = None
                if link is not None:
                    # Closed before the backoff: a connection given up on (never
                    # confirmed) must not linger, nor deliver, meanwhile.
                    await asyncio.shield(link.aclose())
            if failure is not None:  # always: serve() only ends by raising
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Stopping: a cancel met in the same turn as a failure can come
                    # out as the failure (asyncio.wait_for on Python 3.11, here or in
                    # a library), and retrying then would never end.
                    raise asyncio.CancelledError from failure
                self._on_down(failure)
                self._log(failure, delay, (self.label, connected))
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self._backoff_max)

    def _log(self, exc: BaseException, delay: float, rate_key: tuple[str, int]) -> None:
        if isinstance(exc, REFUSALS):
            # A refused login or command is no outage: say what Redis said, for
            # the operator to act on (retrying mends it once they have).
            log.warning(
                "%s refused this node (%s: %s); retrying in %.2fs",
                self.label,
                type(exc).__name__,
                exc,
                delay,
                extra={"rate_key": rate_key},
            )
        else:
            log.warning(
                "%s unreachable (%s); retrying in %.2fs",
                self.label,
                type(exc).__name__,
                delay,
                extra={"rate_key": rate_key},
            )


async def _answered(link: Link, timeout: float) -> None:
    """``link``'s PING answered within ``timeout`` (asyncio.timeout: see
    ``respconn.open_connection`` for why not wait_for)."""
    async with asyncio.timeout(timeout):
        await link.ping()


async def _served(link: Link) -> None:
    """Serve ``link`` until it ends or goes silent (bushub.broker.liveness).

    Raises:
        Why it ended: the connection's error, or TimeoutError for its silence.
    """
    serving = asyncio.ensure_future(link.serve())
    watching = asyncio.ensure_future(liveness.watch(link))
    try:
        done, _ = await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in (serving, watching):
            task.cancel()
        await asyncio.gather(serving, watching, return_exceptions=True)
