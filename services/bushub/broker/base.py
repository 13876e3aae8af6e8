"""What the hub needs from a broker, and nothing about how it is done.

Routing code talks to this interface only, so a single Redis, a Redis Cluster with
sharded pub/sub, or the in-process broker can sit behind it.

Records are opaque to the broker but for one convention of its own: a record's value
begins with the id of the connection that owns it and a space (``owner_of``). That
is what lets a refresh or a delete act only while the same owner still holds the key,
in one step on the server (the Redis scripts compare the same prefix). What follows
the space is the caller's.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from bushub.broker.nodes import NodeRegistry
from bushub.broker.sessionscripts import Reasserted, Resumed, SessionLimits

# Called for every message on a subscribed channel, in the order the broker
# delivered them. It must not block: it hands work off and returns.
MessageHandler = Callable[[str, bytes], None]
# Called with True when the broker becomes reachable, False when it is lost.
StateHandler = Callable[[bool], None]
# Records read per command by ``Broker.scan_records``: 100,000 agents' records in one
# MGET were a 12 MB reply on the connection that carries the node's publishes.
RECORDS_PER_READ = 1000
# Called with Redis' error reply to a subscription refused on a connection confirmed
# before: the node's user lost the permission while it runs (on a cluster, also a slot
# that moved).
RefusedHandler = Callable[[Exception], None]
# Called once per message taken by ``Broker.publish_nowait``, in the order they were
# taken: with how many subscribers it reached; with the error reply where Redis
# refused it (see refusals.py: the caller retries or drops it by kind); or with None
# where its connection failed first: not known to be out, the caller retries.
PublishDone = Callable[[int | Exception | None], None]


def owner_of(value: bytes) -> str:
    """The id of the connection that owns a record: its value up to the first space."""
    return value.partition(b" ")[0].decode(errors="replace")


class PartialPublish(ConnectionError):
    """Some messages of a batch were published and some refused.

    Args:
        counts: Per message, the subscribers it reached, or None where refused
            (those, and only those, are to be retried).
        reason: The first refusal, for logs.
        errors: Per message, the error reply where Redis answered with one (None
            elsewhere); without it every refusal counts as retryable.
    """

    def __init__(
        self, counts: list[int | None], reason: str, errors: Sequence[object | None] = ()
    ) -> None:
        super().__init__(reason)
        self.counts = counts
        self.errors: list[object | None] = list(errors) or [None] * len(counts)


class Broker(ABC):
    """Pub/sub channels plus expiring presence records."""

    def __init__(self) -> None:
        self._on_message: MessageHandler = lambda channel, data: None
        self._on_state: StateHandler = lambda up: None
        self.on_subscribe_refused: RefusedHandler = lambda error: None

    def set_handlers(self, on_message: MessageHandler, on_state: StateHandler) -> None:
        """Route delivered messages and reachability changes to the hub."""
        self._on_message = on_message
        self._on_state = on_state

    @property
    @abstractmethod
    def up(self) -> bool:
        """True while the broker is reachable."""

    @property
    @abstractmethod
    def description(self) -> str:
        """What this broker is, for logs (never with credentials)."""

    @property
    @abstractmethod
    def nodes(self) -> NodeRegistry:
        """The node registry (heartbeats and claim indexes) on this broker."""

    @abstractmethod
    async def start(self) -> None:
        """Connect; raises if the broker cannot be reached at start-up."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; safe to call twice."""

    @abstractmethod
    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish in order; returns how many subscribers got each message.

        Raises:
            PartialPublish: some messages were refused; says which.
            ConnectionError: the broker is unreachable; nothing in ``items`` is known
                to have been published.
        """

    def publish_nowait(self, channel: str, data: bytes, done: PublishDone) -> bool:
        """Publish without a task switch where the broker can: True if it took the
        message (``done`` will be called for it, from the event loop, never from
        inside this call), False if the caller must use ``publish_many``.

        Messages taken go out in the order taken, and after every earlier
        ``publish_many`` batch that has returned. This default takes nothing.
        """
        return False

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start delivering ``channel`` to the message handler."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``."""

    async def confirm_subscriptions(self) -> None:
        """Subscribe every channel again on the live connection and wait until the
        broker has taken them (after ``on_subscribe_refused``: is it allowed again?).
        Returns at once without a live connection (its reconnect subscribes them all).
        This default has nothing to confirm.

        Raises:
            RedisError: the broker refused them still.
            ConnectionError, TimeoutError: the connection failed or did not answer.
        """
        return None

    @abstractmethod
    async def put_record(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until deleted),
        replacing any holder."""

    @abstractmethod
    async def claim_record(
        self, key: str, value: bytes, ttl: float | None, channel: str, data: bytes
    ) -> None:
        """Store ``value`` under ``key`` (as `put_record`) and publish ``data`` on
        ``channel`` in one step: nothing published or written falls between them.

        Readers of the key can then tell whether a publish on the channel came
        before their read, which a subscriber that missed it needs to know.

        Raises:
            ConnectionError: the broker is unreachable; neither may have happened.
        """

    @abstractmethod
    async def refresh_records(
        self, items: Sequence[tuple[str, str, bytes]], ttl: float | None, *, create: bool = True
    ) -> list[bool]:
        """Re-store ``(key, conn, value)`` records still held by ``conn``, or absent
        (unless ``create`` is False: a record deleted meanwhile stays deleted).

        Returns, per item, False where the record was not stored.
        """

    @abstractmethod
    async def delete_record(self, key: str, conn: str) -> None:
        """Delete ``key`` only if ``conn`` still holds it."""

    async def delete_records(self, items: Sequence[tuple[str, str]]) -> None:
        """`delete_record` for each ``(key, conn)``; brokers send them together."""
        for key, conn in items:
            await self.delete_record(key, conn)

    @abstractmethod
    async def get_records(self, keys: Sequence[str]) -> list[bytes | None]:
        """Read several records; None where absent or expired."""

    @abstractmethod
    async def scan_records(self, pattern: str, most: int) -> list[bytes]:
        """Live records whose key matches ``pattern``, ``most`` keys at the most
        (operator views only): the scan stops there, and the values are read in
        batches of ``RECORDS_PER_READ``, so that the node serves its sockets between
        them and no one reply is megabytes."""

    async def _live_values(self, keys: Sequence[str]) -> list[bytes]:
        """The values of ``keys`` that are live, read ``RECORDS_PER_READ`` at a time."""
        values: list[bytes] = []
        for start in range(0, len(keys), RECORDS_PER_READ):
            batch = await self.get_records(keys[start : start + RECORDS_PER_READ])
            values += [value for value in batch if value is not None]
        return values

    # ---- sessions (docs/protocol.md, Sessions) ------------------------------

    def keep_for_sessions(self, limits: SessionLimits) -> None:
        """From now on, publish every message for an agent through the delivery
        step that keeps it for the session holding the agent, if any."""
        raise NotImplementedError

    async def resume_session(
        self, agent: str, session: str, received: int, epoch: str, conn: str, renew: bool = False
    ) -> Resumed:
        """Make ``session``, on connection ``conn``, the session holding ``agent``
        and read what it missed after position ``received``: ``REPLAY_PAGE``
        messages at most, the rest read with ``read_session``.

        Args:
            epoch: The epoch to take if this starts a new numbering (new or gap).
            renew: The proxy gave up messages it sent: a session it holds resumes
                as a gap (``epoch`` taken, what it missed replayed all the same).
        """
        raise NotImplementedError

    async def read_session(
        self, agent: str, after: int, most: int | None = None
    ) -> list[tuple[int, bytes]]:
        """The messages kept for ``agent``'s session after position ``after``, oldest
        first: ``most`` of them at most (None: all)."""
        raise NotImplementedError

    async def reassert_session(
        self, agent: str, session: str, epoch: str, conn: str, delivered: int
    ) -> Reasserted:
        """After a broker break, or when Redis did not keep a message for a connected
        session: make sure ``session`` still holds ``agent`` on ``conn`` and numbers
        after ``delivered``, putting it back if Redis lost it."""
        raise NotImplementedError

    async def ack_sessions(self, items: Sequence[tuple[str, str, int]]) -> None:
        """``(agent, session, position)``: forget what each session took of its agent's
        stream, up to the position (sent together)."""
        raise NotImplementedError

    def ack_session_nowait(self, agent: str, session: str, position: int) -> bool:
        """``ack_sessions`` for one session without waiting, written with this
        event-loop iteration's publishes; False (nothing done) where the broker has
        no such path or it is not connected. A trim that fails is only logged: the
        session's next acknowledgement covers it."""
        return False

    async def release_sessions(self, items: Sequence[tuple[str, str]], window: float) -> None:
        """``(agent, conn)``: the connection ended; keep its session for ``window``
        seconds more, unless a newer connection holds it already."""
        raise NotImplementedError

    async def session_kept(self, agent: str) -> bool:
        """Whether a session of ``agent`` is kept: held by a socket, or away for at
        most the window."""
        raise NotImplementedError

    async def end_away_session(self, agent: str, position: int) -> int | None:
        """A socket without a session holds ``agent`` and was given the message the
        stream of the name's away session keeps at ``position``: end that session
        (and its stream), so a resume of it is a gap, not a replay of what that
        socket was given. A session some socket holds is left alone (None). Returns
        how many messages the stream kept before ``position``: lost with it."""
        raise NotImplementedError

    async def relayed_senders_gone(self, agent: str, most: int) -> dict[bytes, bytes]:
        """The sending sessions whose newest position relayed to ``agent`` the delivery
        step remembers (to relay a resend once) though the session is gone: expired
        (away past the window) or replaced by a newer session of its agent. Each with
        the position remembered; at most ``most``."""
        raise NotImplementedError

    async def forget_relayed(self, agent: str, senders: dict[bytes, bytes]) -> int:
        """Forget what the delivery step remembers of each sender, if it still holds
        the position given (one that relayed again since is kept); how many were."""
        raise NotImplementedError
