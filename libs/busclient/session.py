"""The client half of a session (docs/protocol.md, Sessions), without I/O.

A session is one reconnecting proxy instance. It keeps two positions across the
proxy's sockets:

- inbound, `Receiver`: ``received``, the last position taken from the hub. A message
  at or below it is a duplicate (the hub replays from ``received`` on a resume, and a
  replay can overlap what was taken just before a drop). What was taken is
  acknowledged at least every `ACK_EVERY` messages or `ACK_DELAY` seconds.
- outbound, `SendLog`: every message the local agent sends gets the next send
  position, for the session's life, and stays until the hub acknowledges it, so that
  a reconnect can send it all again with the same positions (the hub relays each
  position once).

`ClientSession` holds both with the session id and builds the handshake URL. The
link (`busclient.reconnecting.ReconnectingLink`) does the I/O and passes the clock in.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

# The protocol's policy (ACK_EVERY, ACK_DELAY) bounds what the hub keeps for this
# session: its stream is trimmed only to what was acknowledged.
from buswire.sessionframe import (
    ACK_DELAY,
    ACK_EVERY,
    ACKS_PARAM,
    INLINE,
    PEER_SEEN_PARAM,
    RECEIVED_PARAM,
    SENT_LOST_PARAM,
    SESSION_PARAM,
    ResumeResult,
    valid_session_id,
)


def new_session_id() -> str:
    """A random session id: 22 characters of ``[A-Za-z0-9_-]``."""
    value = secrets.token_urlsafe(16)
    if not valid_session_id(value):  # cannot happen with token_urlsafe; fail loudly if it does
        raise RuntimeError("token_urlsafe made an id the hub would refuse")
    return value


def session_url(
    url: str, session_id: str, received: int, sent_lost: int = 0, peer_seen: bool = False
) -> str:
    """``url`` with ``session``, ``received`` and ``acks=inline`` (this side takes
    acknowledgements riding on messages) in its query, ``sent_lost`` when messages
    sent were given up on, and ``peer_seen=1`` once the proxy was told of its peer,
    replacing any already there.

    Other query parameters are kept, in order.
    """
    parts = urlsplit(url)
    ours = (SESSION_PARAM, RECEIVED_PARAM, ACKS_PARAM, SENT_LOST_PARAM, PEER_SEEN_PARAM)
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name not in ours
    ]
    query += [(SESSION_PARAM, session_id), (RECEIVED_PARAM, str(received)), (ACKS_PARAM, INLINE)]
    if sent_lost:
        query.append((SENT_LOST_PARAM, str(sent_lost)))
    if peer_seen:
        query.append((PEER_SEEN_PARAM, "1"))
    encoded = urlencode(query, quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, encoded, parts.fragment))


@dataclass(slots=True)
class LogEntry:
    """One sent message waiting for the hub's acknowledgement."""

    position: int
    payload: bytes
    stamp: float  # when the local agent sent it, for max_age
    # When it was first written to a socket (the hub may have relayed it from then
    # on); None while it was only held.
    written: float | None = None


class SendLog:
    """What this side sent and the hub has not acknowledged yet, in position order.

    Bounded by ``max_messages`` and ``max_bytes`` (the proxy's buffer bounds). When a
    message does not fit, the caller either waits for acknowledgements (`fits`) or
    drops the oldest (`append` does, counting ``overflowed``): the log always keeps
    the newest, and a single message larger than ``max_bytes`` is kept alone. With
    ``max_age``, messages older than that are dropped by `expire`, counted in
    ``expired``. Every message given up on before its acknowledgement (all of
    these) is also counted in ``unreported`` until a handshake tells the hub.
    """

    def __init__(
        self, max_messages: int = 1000, max_bytes: int = 8 << 20, max_age: float | None = None
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("send log bounds must be >= 1")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._entries: deque[LogEntry] = deque()
        self.bytes = 0
        self.last_position = 0  # the last position given out; never reset
        self.acked = 0  # the highest position the hub acknowledged
        self.overflowed = 0
        self.expired = 0
        self.unreported = 0

    def __len__(self) -> int:
        return len(self._entries)

    def fits(self, size: int) -> bool:
        """Whether a message of ``size`` bytes can join without dropping anything."""
        if not self._entries:
            return True
        return len(self._entries) < self.max_messages and self.bytes + size <= self.max_bytes

    def append(self, payload: bytes, now: float) -> tuple[int, int]:
        """Log ``payload`` at the next position, dropping the oldest to stay in bounds.

        Returns:
            (its position, how many older messages were dropped).
        """
        self.last_position += 1
        self._entries.append(LogEntry(self.last_position, payload, now))
        self.bytes += len(payload)
        dropped = 0
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_messages or self.bytes > self.max_bytes
        ):
            self._remove_oldest()
            dropped += 1
        self.overflowed += dropped
        self.unreported += dropped
        return self.last_position, dropped

    def drop_oldest(self) -> None:
        """Give up on the oldest message to make room (counted in ``overflowed``)."""
        if self._entries:
            self._remove_oldest()
            self.overflowed += 1
            self.unreported += 1

    def ack(self, position: int) -> int:
        """The hub took everything up to ``position``; returns how many left the log."""
        self.acked = max(self.acked, position)
        trimmed = 0
        while self._entries and self._entries[0].position <= position:
            self._remove_oldest()
            trimmed += 1
        return trimmed

    def expire(self, now: float) -> int:
        """Drop messages older than ``max_age``; returns how many."""
        if self.max_age is None:
            return 0
        count = 0
        while self._entries and now - self._entries[0].stamp > self.max_age:
            self._remove_oldest()
            count += 1
        self.expired += count
        self.unreported += count
        return count

    def written(self, entry: LogEntry, now: float) -> None:
        """``entry`` is being written to a socket (its first write is kept)."""
        if entry.written is None:
            entry.written = now

    def drop_sent_before(self, cutoff: float) -> int:
        """Drop what was first written to a socket before ``cutoff`` (counted in
        ``expired``): the hub no longer remembers whether it relayed it, so sending
        it again could relay it twice. What was only held (never written) cannot have
        been relayed and stays. Returns how many."""
        count = 0
        # Written ones come first: every write is in position order.
        while self._entries and (written := self._entries[0].written) is not None:
            if written >= cutoff:
                break
            self._remove_oldest()
            count += 1
        self.expired += count
        self.unreported += count
        return count

    def newest(self) -> LogEntry:
        """The entry appended last."""
        return self._entries[-1]

    def entries(self) -> list[LogEntry]:
        """Everything logged, oldest first (a copy: the log may change while it is sent)."""
        return list(self._entries)

    def pop_oldest(self) -> LogEntry:
        """Remove and return the oldest entry (a plain socket takes it without an ack)."""
        entry = self._entries[0]
        self._remove_oldest()
        return entry

    def clear(self) -> int:
        """Drop everything; returns how many messages that was."""
        count = len(self._entries)
        self._entries.clear()
        self.bytes = 0
        return count

    def _remove_oldest(self) -> None:
        entry = self._entries.popleft()
        self.bytes -= len(entry.payload)


class Receiver:
    """The inbound position, duplicate filter, ack schedule and resume accounting."""

    def __init__(self, ack_every: int = ACK_EVERY, ack_delay: float = ACK_DELAY) -> None:
        self.ack_every = ack_every
        self.ack_delay = ack_delay
        self.received = 0  # the last position taken from the hub
        self.acked = 0  # the last position the hub was told was taken
        self._unacked_since: float | None = None  # when the first unacknowledged one came
        self.duplicates = 0
        self.gaps = 0
        self.recovered = 0
        self.resumes = 0  # handshakes the hub answered with a result

    def take(self, position: int, now: float) -> bool:
        """A message at ``position`` arrived; True if it is new and is to be handed on."""
        if position <= self.received:
            self.duplicates += 1
            return False
        self.received = position
        if self._unacked_since is None:
            self._unacked_since = now
        return True

    @property
    def ack_deadline(self) -> float | None:
        """When the pending acknowledgement is due at the latest; None if none is."""
        if self._unacked_since is None:
            return None
        return self._unacked_since + self.ack_delay

    def ack_due(self, now: float) -> bool:
        """Whether to acknowledge ``received`` now (count or age reached)."""
        if self._unacked_since is None or self.received <= self.acked:
            return False
        return self.received - self.acked >= self.ack_every or now >= self._unacked_since + (
            self.ack_delay
        )

    def ride(self) -> int:
        """The acknowledgement a message about to be sent carries inline: ``received``
        when it is not acknowledged yet (counted as acknowledged from now on), else 0.

        Counted before the write, which may wait: a resume meanwhile starts the count
        again and must not be overtaken (a socket that fails takes the acknowledgement
        with it; the next handshake says what was received).
        """
        received = self.received
        if received <= self.acked:
            return 0
        self.acknowledged(received)
        return received

    def acknowledged(self, position: int) -> None:
        """An acknowledgement of ``position`` was written to the hub."""
        self.acked = max(self.acked, position)
        if self.acked >= self.received:
            self._unacked_since = None

    def resumed(self, result: str) -> bool:
        """Apply a handshake's result; True if messages from the hub were lost.

        The handshake's ``received`` told the hub what was taken, so nothing is owed
        afterwards. On ``new`` and ``gap`` the hub's numbering may start again from 1,
        so ``received`` goes back to 0. ``new`` on any handshake but the first means
        the hub forgot the session (away past its window, or Redis lost it), a loss
        as much as ``gap``, whether or not anything had been taken: what was sent
        meanwhile was not kept for it.
        """
        self.acked = self.received
        self._unacked_since = None
        self.resumes += 1
        if result == ResumeResult.RECOVERED:
            self.recovered += 1
            return False
        lost = result == ResumeResult.GAP or self.received > 0 or self.resumes > 1
        self.received = 0
        self.acked = 0
        if lost:
            self.gaps += 1
        return lost


class ClientSession:
    """One proxy instance's session: its id, its send log and its receiver."""

    def __init__(
        self,
        max_messages: int = 1000,
        max_bytes: int = 8 << 20,
        max_age: float | None = None,
        session_id: str | None = None,
    ) -> None:
        self.id = session_id if session_id is not None else new_session_id()
        if not valid_session_id(self.id):
            raise ValueError("a session id is 1-64 of [A-Za-z0-9_-]")
        self.log = SendLog(max_messages, max_bytes, max_age)
        self.receiver = Receiver()
        # The count of messages given up on that the URL being dialled tells.
        self._telling = 0
        # A hub told this session of its peer (a registry message naming it).
        self.peer_seen = False

    def url(self, base: str) -> str:
        """The URL to dial now: ``base`` with this session, its received position,
        the messages sent and given up on that no hub was told of yet, and whether it
        was told of its peer."""
        self._telling = self.log.unreported
        return session_url(
            base, self.id, self.receiver.received, self._telling, peer_seen=self.peer_seen
        )

    def told(self) -> int:
        """A hub answered the handshake: the messages given up on that its URL told
        of are reported (its resume was a gap, its peers told anew); how many."""
        told, self._telling = self._telling, 0
        self.log.unreported -= told
        return told


__all__ = [
    "ACK_DELAY",
    "ACK_EVERY",
    "ClientSession",
    "LogEntry",
    "Receiver",
    "SendLog",
    "new_session_id",
    "session_url",
]
