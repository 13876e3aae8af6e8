"""A raw pub/sub connection that hands each message over from the read callback.

redis-py's ``PubSub`` needs a task awaiting ``get_message()``, one task step per
delivered message on the relay's hot path. Here the event loop's ``data_received``
feeds hiredis and calls the message handler for every message push in what
arrived; the task that owns the connection only awaits its loss. The same
connection speaks classic pub/sub (``SUBSCRIBE``, ``message``) or Redis Cluster's
sharded pub/sub (``SSUBSCRIBE``, ``smessage``).
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from redis.crc import key_slot

from bushub.broker.base import MessageHandler, RefusedHandler
from bushub.broker.credentials import Credentials
from bushub.broker.refusals import as_redis_error, is_redirect
from bushub.broker.respconn import RespConnection, encode_command, open_connection

log = logging.getLogger(__name__)

# Channels per SUBSCRIBE/UNSUBSCRIBE command: a node with thousands of agents
# resubscribes in a few writes without building one huge command.
SUBSCRIBE_BATCH = 500

# Called with the channel Redis unsubscribed this connection from.
DroppedHandler = Callable[[str], None]


class Subscriber(RespConnection):
    """One pub/sub connection; open it with `Subscriber.open`.

    Args:
        on_message: Called with (channel, data) for every message, in order, from
            the event loop's read callback: it must not block.
        sharded: Redis Cluster's sharded pub/sub instead of the classic one.

    Attributes:
        on_dropped: Called with each channel an unsubscribe push names: this
            connection's own UNSUBSCRIBEs, and (sharded) the channels of a slot
            that moved away, which Redis unsubscribes on its own.
        on_refused: Called with an error reply no command was waiting for: a
            SUBSCRIBE refused after the connection was confirmed (logged either way).
        on_moved: (sharded) Called with each ``MOVED`` (or ``ASK``) reply to a
            SSUBSCRIBE, whenever it comes: that slot's channels are another
            primary's, and this connection, its other channels subscribed, goes on.
    """

    what = "pub/sub"

    def __init__(self, on_message: MessageHandler, *, sharded: bool = False) -> None:
        super().__init__()
        self.on_message = on_message
        self.on_dropped: DroppedHandler | None = None
        self.on_refused: RefusedHandler | None = None
        self.on_moved: RefusedHandler | None = None
        self.sharded = sharded
        if sharded:
            self._commands = (b"SSUBSCRIBE", b"SUNSUBSCRIBE")
            self._message = b"smessage"
            self._confirmations = (b"ssubscribe", b"sunsubscribe")
        else:
            self._commands = (b"SUBSCRIBE", b"UNSUBSCRIBE")
            self._message = b"message"
            self._confirmations = (b"subscribe", b"unsubscribe")

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 2.0,
        sharded: bool = False,
    ) -> "Subscriber":
        """Connect (and AUTH), each step bounded by ``timeout``.

        Raises:
            ConnectionError: unreachable, or AUTH refused.
            TimeoutError: Redis did not answer in time.
        """
        return await open_connection(
            lambda: cls(on_message, sharded=sharded),
            host,
            port,
            Credentials(username, password),
            timeout,
        )

    def subscribe(self, channels: Iterable[str]) -> None:
        """Write SUBSCRIBE for ``channels``; Redis confirms later (ignored)."""
        self._write_batched(self._commands[0], channels)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Write UNSUBSCRIBE for ``channels``."""
        self._write_batched(self._commands[1], channels)

    async def written(self) -> None:
        """At once: ``subscribe`` and ``unsubscribe`` write at the call."""

    def ping(self) -> Coroutine[Any, Any, None]:
        """Write a PING now; awaited, its answer: Redis has run every command written
        before it (all SUBSCRIBEs among them), so messages published from now on arrive.

        Written at the call, not at the awaiting task's first step: Redis' refusal of
        a SUBSCRIBE just written can arrive within that loop iteration, before the
        PING waits for a reply; it was then taken for an unasked error, and the
        connection, its subscriptions all refused, for confirmed (a node with no
        subscriptions said it was ready).

        Raises:
            RedisError: a SUBSCRIBE before it was refused (NOPERM, MOVED...), as
                redis-py would have raised it.
            ConnectionError: the connection was lost first.
        """
        return self._answered(self.request(encode_command(b"PING")))

    @staticmethod
    async def _answered(replies: "asyncio.Future[list[Any]]") -> None:
        [reply] = await replies
        if isinstance(reply, Exception):
            raise as_redis_error(reply)

    async def serve(self) -> None:
        """Wait for the connection to end (messages are delivered from the read
        callback meanwhile).

        Raises:
            ConnectionError: always, once it has ended, saying why.
        """
        cause = await asyncio.shield(self.lost)
        raise ConnectionError(f"pub/sub connection lost: {cause or 'closed by redis'}")

    def close(self) -> None:
        # Nothing buffered is worth waiting for: drop the socket at once.
        self.abort()

    def _write_batched(self, command: bytes, channels: Iterable[str]) -> None:
        if not self.is_open:
            return  # the owner resubscribes everything on the next connection
        names = [c.encode() for c in channels]
        if self.sharded:
            # A sharded command's channels must share a slot (else CROSSSLOT).
            by_slot: dict[int, list[bytes]] = {}
            for name in names:
                by_slot.setdefault(key_slot(name), []).append(name)
            groups: Iterable[list[bytes]] = by_slot.values()
        else:
            groups = (names,)
        self.write(
            b"".join(
                encode_command(command, *group[i : i + SUBSCRIBE_BATCH])
                for group in groups
                for i in range(0, len(group), SUBSCRIBE_BATCH)
            )
        )

    # ---- replies ------------------------------------------------------------

    def _on_reply(self, reply: Any) -> None:
        # The hot path: one message push, handed over from the read callback.
        if type(reply) is list and reply[0] == self._message:
            try:
                self.on_message(reply[1].decode(), reply[2])
            except Exception:
                # A handler's bug must not cost the subscription.
                log.exception("message handler failed")
        elif type(reply) is list and reply[0] in self._confirmations:
            if reply[0] == self._confirmations[1] and self.on_dropped is not None:
                self.on_dropped(reply[1].decode())
        elif self.sharded and isinstance(reply, Exception) and is_redirect(reply):
            # Not an answer to a PING (which names no key): a SSUBSCRIBE sent on a
            # slot map a step behind a reshard. Taken for the PING's answer it failed
            # the connection, every channel on it, and the node's readiness with it.
            log.info("redis pub/sub connection: %s", reply)
            if self.on_moved is not None:
                self.on_moved(reply)
        else:
            self._answer(reply)

    def _unasked(self, reply: Any) -> None:
        if isinstance(reply, Exception):
            # A refused SUBSCRIBE (ACL; a slot moved): that channel stays silent; say so.
            log.warning("redis pub/sub connection: %s", reply)
            if self.on_refused is not None:
                self.on_refused(reply)
