"""Sessions on one node: exactly once, in order, across reconnects (docs/protocol.md,
Sessions).

A socket whose handshake named a session gets a `Session`. Towards the agent, every
message addressed to it is kept in Redis by the broker's delivery step; here the node

- resumes the session once the socket's claim has come back (its message channel is
  subscribed by then, so whatever the resume's read missed arrives live), replays
  what the proxy had not received, and only then lets live messages through, each
  position once and in order;
- fills a hole in the live positions from the stream (a message dropped on the way,
  a subscription that lapsed in a broker break);
- passes the proxy's acknowledgements on to Redis, which trims what it took.

From the agent, each message carries the session's send position into the relay
frame; the delivery step relays each position once. The node acknowledges a
position to the proxy once every message up to it has an outcome (relayed, kept,
relayed once already, or refused for good), so the proxy can forget it.
"""

import asyncio
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bushub.broker import Broker
from bushub.broker.sessionscripts import REPLAY_PAGE, Reasserted, Resumed
from bushub.closecodes import CloseCode
from bushub.connection import Connection
from bushub.metrics import Metrics
from bushub.settings import Settings
from buswire import DropReason, sessionframe
from buswire.relayframe import MAX_SENDER_BYTES, origin_key, sender_of, session_origin
from buswire.sessionframe import ACK_DELAY, ACK_EVERY

log = logging.getLogger(__name__)

# Acknowledgements to a proxy follow the protocol's policy, as the proxy's own do: at
# once when ACK_EVERY of its positions have settled since the last, else ACK_DELAY
# after the first of them. Each is a write of its own (a system call): acknowledged
# on every 50 ms tick, a socket busy at 40 messages/s was written one for every two
# of its messages. The proxy's send log (1,000 messages) is not strained by the lag.
#
# How often acknowledgements due are written.
ACK_TICK = 0.05
# A proxy's acknowledgement is passed on to Redis (a trim) at most this often per
# session, the ones between coalesced into the next: one taking inline
# acknowledgements acknowledges with nearly every message it sends, and a trim per
# message would cost Redis more than the delivery itself. A trim costs the node a
# command and its reply: every ACK_DELAY, it came once in eight messages of a pair
# at 40 round trips/s, and with every message of one at a few a second. What was
# acknowledged stays in Redis up to a second longer (bounded by ``--resume-messages``
# and ``--resume-bytes`` as everything kept), and a resume replays from what the
# proxy says it received, never from the trim.
TRIM_SPACING = 1.0
# When the tick takes what waits: an acknowledgement to the proxy a little early rather
# than a whole tick late; a trim a tick late (an acknowledgement from the proxy coming
# meanwhile passes it on itself).
_ACK_DUE_AFTER = ACK_DELAY - ACK_TICK / 2
_TRIM_DUE_AFTER = TRIM_SPACING + ACK_TICK / 2
# Sessions re-asserted at once after a broker break (one script call each).
_REASSERT_BATCH = 256
# A session frame's head, at most: what a message written at a position adds.
_FRAMING = sessionframe.ACKED_HEAD
# How often a name's away session may be asked to end for a socket without a session
# holding the name (the messages numbered meanwhile each ask), and names remembered.
_END_AWAY_EVERY = 1.0
_ENDING_ASKED_KEPT = 4096
# Sending sessions whose newest position a socket remembers (``Session.senders``):
# a resend comes within seconds of its sender's reconnect.
_SENDERS_KEPT = 1024
# How often a session a message came unkept for is put back at most (``unkept``):
# every message for it comes unkept until it is.
_UNKEPT_RECHECK = 1.0
# How soon a release that failed is tried again, doubling up to the most: until it is
# released, a session whose socket ended is held for good (it never expires).
_RELEASE_AGAIN_FIRST = 0.5
_RELEASE_AGAIN_MOST = 10.0
# Messages a second taken as a socket's rate for the ``sent_lost`` bound when it has
# none (--rate-messages 0).
_SENT_LOST_RATE_FLOOR = 2000.0


class SessionParamError(ValueError):
    """The handshake's session parameters are malformed."""


def session_params(agent: str, query: dict[str, str]) -> tuple[str, int, int] | None:
    """(session id, position received, messages the proxy sent and gave up on) from a
    handshake's query; None without a session.

    Raises:
        SessionParamError: a malformed id, position or count, or an agent name and id
            too long together to name the sender of its messages.
    """
    session = query.get(sessionframe.SESSION_PARAM)
    if session is None:
        return None
    if not sessionframe.valid_session_id(session):
        raise SessionParamError("session must be 1-64 of [A-Za-z0-9_-]")
    # Its messages name it as their sender, in a relay frame's few bytes: an agent
    # name of multi-byte characters can leave too little room.
    if len(sender_of(agent, session)) > MAX_SENDER_BYTES:
        raise SessionParamError(f"agent name and session id over {MAX_SENDER_BYTES} bytes")
    received = _count_param(query, sessionframe.RECEIVED_PARAM, "a position")
    return session, received, _count_param(query, sessionframe.SENT_LOST_PARAM, "a count")


def _count_param(query: dict[str, str], name: str, what: str) -> int:
    """A handshake parameter of up to 15 digits; 0 when absent."""
    raw = query.get(name, "0")
    # isdigit() alone takes "²" (which int() refuses) and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:
        raise SessionParamError(f"{name} must be {what} (digits)")
    return int(raw)


@dataclass(eq=False, slots=True)
class Session:
    """One socket's session state on this node.

    Attributes:
        id: The session id the proxy named.
        received: The position the proxy said it had received at the handshake.
        epoch: The session's epoch (it changes on a gap).
        result: How the resume went: new, recovered or gap.
        newest_at_resume: The newest position kept when the resume read the stream:
            every position up to it was replayed, or is not this session's.
        delivered: The newest position written to the socket (or covered by the
            resume: positions at or below it are not written again).
        replaying: Live messages wait in ``held`` while the stream is being read.
        replay: What the resume read from the stream, until the socket is open.
        held: Live relay frames that arrived while replaying: (position, frame).
        held_bytes: Their bytes (bounded by ``--queue-bytes``, as a socket's queue).
        fill_after: The stream is read again once the replay or the fill under way is
            done: the socket missed messages past what that reads (``missed``).
        outstanding: The proxy's positions routed and without an outcome yet, in order.
        settled_early: Positions with an outcome while an older one has none.
        acked: The newest position acknowledged to the proxy.
        proxy_acked: The newest position the proxy acknowledged (0: none yet).
        proxy_acked_sent: The newest of those passed on to Redis.
        trimmed_at: When they were last passed on (``time.monotonic``).
        acked_written: The newest acknowledgement written to the proxy.
        ack_since: When the oldest position not yet acknowledged settled
            (``time.monotonic``; 0 when every settled position is acknowledged).
        origin: The sender its messages carry: its agent and session id.
        inline_acks: The proxy takes acknowledgements inline on the messages
            written to it (it asked with ``acks=inline``).
        senders: The newest position of each sending session written to the
            socket (made with the first): a sender's resend that Redis relayed
            again, having lost its record of the first (a restart, a failover), is
            not written twice while the socket lasts.
        unkept_at: When the session was last put back because a message for it
            came unkept (``time.monotonic``; 0: never).
        sent_lost: Messages its proxy sent and gave up on unacknowledged, as the
            handshake said: its resume is a gap, so that its peers announce it anew.
        peer_seen: The proxy was told of its peer on an earlier socket of the session
            (``peer_seen=1``): a peer absent here is taken as gone (``bushub.peers``).
    """

    id: str
    received: int
    epoch: str = ""
    result: str = ""
    newest_at_resume: int = 0
    delivered: int = 0
    replaying: bool = True
    replay: list[tuple[int, bytes]] = field(default_factory=list)
    held: list[tuple[int, bytes]] = field(default_factory=list)
    held_bytes: int = 0
    fill_after: bool = False
    # Lists, not a deque and a set: both hold a few entries at most (acknowledged
    # within milliseconds) and an idle session should cost little memory.
    outstanding: list[int] = field(default_factory=list)
    settled_early: list[int] = field(default_factory=list)
    acked: int = 0
    proxy_acked: int = 0
    proxy_acked_sent: int = 0
    trimmed_at: float = 0.0
    acked_written: int = 0
    ack_since: float = 0.0
    origin: bytes = b""
    inline_acks: bool = False
    senders: dict[bytes, bytes] | None = None
    unkept_at: float = 0.0
    sent_lost: int = 0
    peer_seen: bool = False

    @property
    def runner(self) -> str:
        """The session as peers know it: a digest of its id (which resumes it, so is
        not told to others) and its epoch."""
        digest = hashlib.sha256(self.id.encode()).hexdigest()[:16]
        return f"s{digest}.{self.epoch}"

    def newest_known(self) -> int:
        """The newest position the socket was given, or will be once its replay or
        a hole's fill is done (the live messages held meanwhile included): a session
        Redis lost is put back numbering after it, so that no new message takes a
        position the socket is still to be given."""
        newest = max(self.delivered, self.newest_at_resume)
        for position, _ in self.held:
            if position > newest:
                newest = position
        return newest

    def settle(self, position: int) -> None:
        """``position`` has an outcome: move the acknowledgement over what is done."""
        outstanding = self.outstanding
        if outstanding and outstanding[0] == position:
            del outstanding[0]
            # Never backwards: a proxy that sends a position twice settles it twice.
            # (Compared, not max(): this runs for every message a session sends.)
            if position > self.acked:
                self.acked = position
            early = self.settled_early
            while early and outstanding and outstanding[0] in early:
                done = outstanding.pop(0)
                early.remove(done)
                if done > self.acked:
                    self.acked = done
        elif position in outstanding:
            self.settled_early.append(position)


# Writes one frame (already framed) to a socket; the outbound side counts it.
Write = Callable[[Connection, bytes, float], None]


class Sessions:
    """The sessions of this node's sockets.

    Args:
        settings: The resume window and bounds.
        broker: Where sessions are kept.
        metrics: Resumes by result, and what happened to sessions' messages.
        write: Writes a framed frame to a socket (``Outbound.enqueue``).
        translate: A relay frame's payload in the socket's format and its receive
            time; None when it cannot be read (``Relay.payload_for``).
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        metrics: Metrics,
        write: Write,
        translate: Callable[[Connection, bytes], tuple[bytes, float] | None],
    ) -> None:
        self.window = settings.resume_window
        self.enabled = settings.resume_window > 0
        # What one handshake may add to the ``sent_lost`` count: as many as the
        # socket's rate lets through in a window (a proxy away longer starts anew).
        # The count is the client's word: one handshake saying 10**15 made the
        # counter too large for a float to add 1 to.
        self._most_sent_lost = math.ceil(
            max(settings.rate_messages, _SENT_LOST_RATE_FLOOR) * settings.resume_window
        )
        # Live messages held behind a replay or a hole's fill, in bytes, per socket at
        # most: a slow reader's replay waits for it, and what comes live meanwhile
        # must not grow without bound.
        self._held_bound = settings.queue_bytes
        self._broker = broker
        self._metrics = metrics
        self._write = write
        self._translate = translate
        # Sockets by origin (agent and session id): the publish outcomes of their
        # messages come back by it.
        self._by_origin: dict[bytes, Connection] = {}
        self._acks_due: set[Connection] = set()
        self._trims_due: set[Connection] = set()
        self._tick: asyncio.TimerHandle | None = None
        # When the tick is set for (``time.monotonic``).
        self._tick_due = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        # When each name's away session was last asked to end (``given_to_plain_holder``).
        self._ending_asked: dict[str, float] = {}
        # Sockets that missed messages while their claim was unconfirmed (``missed``).
        self._missed: set[Connection] = set()
        # Sessions whose release failed, by (agent, connection id): when the socket
        # ended (``time.monotonic``), and whether a task is releasing them again.
        self._unreleased: dict[tuple[str, str], float] = {}
        self._releasing = False

    # ---- the handshake --------------------------------------------------------

    async def resume(self, conn: Connection) -> Resumed:
        """Resume ``conn``'s session once its claim has come back (its channel is
        subscribed then): live messages wait until ``started``.

        Raises:
            ConnectionError: the broker could not be asked.
        """
        session = conn.session
        assert session is not None
        epoch = secrets.token_hex(4)
        resumed = await self._broker.resume_session(
            conn.agent, session.id, session.received, epoch, conn.id, session.sent_lost > 0
        )
        session.epoch = resumed.epoch
        session.result = resumed.result
        self._metrics.resumes.labels(resumed.result).inc()
        # Counted for a session the hub held (its peers are told of the gap); one it
        # did not hold starts anew, its proxy reporting the loss itself, so a first
        # handshake cannot add to the count.
        if session.sent_lost and resumed.result != sessionframe.ResumeResult.NEW:
            counted = min(session.sent_lost, self._most_sent_lost)
            log.warning(
                "session of %s: its proxy gave up %d message(s) it sent unacknowledged%s",
                conn.agent,
                session.sent_lost,
                f" (counted {counted}: its rate allows no more in a window)"
                if counted < session.sent_lost
                else "",
                extra={"rate_key": conn.agent},
            )
            self._metrics.session_messages.labels("sent_lost").inc(counted)
        if resumed.lost:
            # Kept for a session that expired, or for another session of the name
            # (a restarted agent's earlier one), and given to nobody.
            self._metrics.session_messages.labels("lost").inc(resumed.lost)
            log.warning(
                "session of %s: %d message(s) kept for the session it replaces (expired, "
                "or another of the name) are lost",
                conn.agent,
                resumed.lost,
                extra={"rate_key": conn.agent},
            )
        if resumed.result == sessionframe.ResumeResult.GAP:
            log.warning(
                "session of %s resumed with a gap (received %d, newest %d)",
                conn.agent,
                session.received,
                resumed.newest,
                extra={"rate_key": conn.agent},  # each agent's gap is told
            )
        # What its messages carry as their sender: the agent with the session, so a
        # socket can only ever mark positions of its own agent's sessions as relayed.
        session.origin = sender_of(conn.agent, session.id)
        previous = self._by_origin.get(session.origin)
        if previous is not None and previous is not conn:
            previous.request_close(CloseCode.TAKEN_OVER)
        self._by_origin[session.origin] = conn
        session.replay = resumed.replay
        session.newest_at_resume = resumed.newest
        return resumed

    def started(self, conn: Connection) -> None:
        """The socket is open: write the replay, then what arrived live meanwhile."""
        session = conn.session
        assert session is not None
        replay, session.replay = session.replay, []
        if conn.ending:
            # Its client left during the handshake (or the node is draining): the
            # stream keeps the replay for its next resume, nothing is lost or sent.
            return
        took = max(session.delivered, session.received)  # the replay reads on from here
        if replay and replay[0][0] > took + 1:
            # Trimmed over the bounds while the session was away (its resume says
            # gap): lost, and counted as a fill's losses are (they went uncounted).
            session.delivered = took
            self._lost_in_transit(conn, session, replay[0][0] - took - 1)
        self._write_kept(conn, session, replay)
        if replay:
            self._metrics.session_messages.labels("replayed").inc(len(replay))
        if len(replay) >= REPLAY_PAGE:
            # The resume read one page: the rest a page at a time, each write
            # between two reads (live messages wait).
            self._spawn(self._replay_rest(conn, session))
            return
        self._replayed(conn, session)

    def _replayed(self, conn: Connection, session: Session) -> None:
        # Positions up to the newest at the resume were replayed or are not ours.
        session.delivered = max(session.delivered, session.newest_at_resume)
        self._release_held(conn, session)

    async def _replay_rest(self, conn: Connection, session: Session) -> None:
        """The resume's replay after its first page, then the live messages held."""
        try:
            replayed = await self._read_kept(conn, session, session.newest_at_resume)
        except ConnectionError as exc:
            # The stream keeps the rest, and the proxy knows what it took: it resumes
            # again from there (through any node), missing nothing.
            log.warning("could not read the stream of %s: %s", conn.agent, exc)
            conn.request_close(CloseCode.TRY_AGAIN_LATER)
            return
        self._metrics.session_messages.labels("replayed").inc(replayed)
        if not conn.ending:
            self._replayed(conn, session)

    async def _read_kept(self, conn: Connection, session: Session, upto: int = 0) -> int:
        """Write what the stream keeps after the socket's newest position (up to
        position ``upto``, if given: what came since waits among the live messages
        held), a page (``REPLAY_PAGE``) per read, until a page comes short or reaches
        ``upto``, or the socket closes; how many messages were written.

        Between two reads the stream's bounds may trim what was kept (a burst for the
        agent): what went is counted lost, as a hole's fill counts it.

        Raises:
            ConnectionError: a page could not be read.
        """
        written = 0
        while not conn.ending and not (upto and session.delivered >= upto):
            # A slow reader's queue is past its bound: the next page waits for it.
            await conn.room()
            if conn.ending:
                break
            entries = await self._broker.read_session(conn.agent, session.delivered, REPLAY_PAGE)
            page, last = len(entries), entries[-1][0] if entries else 0
            if upto:
                entries = [entry for entry in entries if entry[0] <= upto]
            # The next position read, or past ``upto`` if none is left up to it (with
            # no ``upto``, nothing read says nothing is missing).
            first = entries[0][0] if entries else upto and upto + 1
            if first > session.delivered + 1:
                self._lost_in_transit(conn, session, first - session.delivered - 1)
            self._write_kept(conn, session, entries)
            written += len(entries)
            if page < REPLAY_PAGE or (upto and last >= upto):
                break
        return written

    def _lost_in_transit(self, conn: Connection, session: Session, lost: int) -> None:
        """``lost`` positions after the socket's newest are in the stream no more
        (trimmed over its bounds, or Redis lost them): the socket goes on past them."""
        log.warning(
            "session of %s: %d positions lost in transit",
            conn.agent,
            lost,
            extra={"rate_key": conn.agent},
        )
        self._metrics.session_messages.labels("lost").inc(lost)
        session.delivered += lost

    def _release_held(self, conn: Connection, session: Session) -> None:
        """Let live messages through again, the ones held meanwhile first."""
        held, session.held = sorted(session.held, key=lambda item: item[0]), []
        session.held_bytes = 0
        session.replaying = False
        for index, (position, data) in enumerate(held):
            self._deliver(conn, session, position, data)
            if session.replaying:  # a hole: the rest wait for its fill
                rest = held[index + 1 :]
                session.held.extend(rest)
                session.held_bytes += sum(len(data) for _, data in rest)
                return
        if session.fill_after:
            session.fill_after = False
            session.replaying = True
            self._spawn(self._fill(conn, session))

    # ---- towards the agent ------------------------------------------------------

    def deliver(
        self, conn: Connection, position: int, data: bytes, payload: bytes, received_at: float
    ) -> None:
        """A relay frame for a session's socket, live from the agent's channel.

        Args:
            position: Its position in the agent's stream; 0 when not kept.
            data: The relay frame (kept while it waits behind a replay or a hole).
            payload: Its message in the socket's format, and ``received_at`` its
                receive time: what is written when it is the next position.
        """
        session = conn.session
        assert session is not None
        if position == session.delivered + 1 and not session.replaying:
            # The next position, live: every message of a session in steady state.
            if self._given_already(session, data):
                session.delivered = position
            else:
                self._write_payload(conn, session, position, payload, received_at)
            return
        self._deliver(conn, session, position, data)

    def _deliver(self, conn: Connection, session: Session, position: int, data: bytes) -> None:
        """A relay frame for a session's socket, other than the next position live:
        held behind a replay, unnumbered, a duplicate, or after a hole."""
        if session.replaying:
            self._hold(conn, session, position, data)
            return
        if position == 0:
            self._write_positioned(conn, session, 0, data)
            return
        if position <= session.delivered:
            self._metrics.session_messages.labels("duplicate").inc()
            return
        if position > session.delivered + 1:
            # A hole: read it from the stream first; this one waits with the rest.
            session.replaying = True
            session.held.append((position, data))
            session.held_bytes += len(data)
            self._spawn(self._fill(conn, session))
            return
        self._write_positioned(conn, session, position, data)

    def _hold(self, conn: Connection, session: Session, position: int, data: bytes) -> None:
        """Keep a live relay frame until the replay or the fill before it is written;
        past the bound the socket is closed as a slow consumer (4008), as a queue
        past it is: its stream keeps what it was not given, for its proxy's resume."""
        if conn.ending:
            return  # nothing more is written to it: its stream keeps what it missed
        if session.held_bytes + len(data) > self._held_bound:
            conn.dropped += 1
            self._metrics.messages_dropped.labels(DropReason.SLOW_CONSUMER).inc()
            session.held, session.held_bytes = [], 0
            conn.request_close(CloseCode.SLOW_CONSUMER)
            return
        session.held.append((position, data))
        session.held_bytes += len(data)

    async def _fill(self, conn: Connection, session: Session) -> None:
        """Write what the stream holds after the socket's newest position, up to the
        first live message held (all of it when none is), then let the live messages
        held meanwhile through. Not past it: a Redis that lost the stream and was put
        back numbers after them, and what it kept since was written before them,
        which were then dropped as duplicates."""
        upto = min((p for p, _ in session.held if p > 0), default=1) - 1
        try:
            await self._read_kept(conn, session, upto)
        except ConnectionError as exc:
            log.warning("could not read the stream of %s: %s", conn.agent, exc)
        if conn.ending:
            return  # its proxy resumes: the stream keeps what was not written
        first = min((p for p, _ in session.held if p > 0), default=0)
        if first > session.delivered + 1:
            # Not in the stream either (trimmed over its bounds, or Redis lost it).
            self._lost_in_transit(conn, session, first - session.delivered - 1)
        self._release_held(conn, session)

    def _write_kept(
        self, conn: Connection, session: Session, entries: list[tuple[int, bytes]]
    ) -> None:
        """Write what the stream kept after the socket's newest position (a resume's
        replay, a hole's fill), all at once: the socket's queue makes room for it."""
        newest = session.delivered
        ready: list[tuple[int, tuple[bytes, float] | None]] = []
        for position, data in entries:
            if position > newest:
                newest = position
                # Given already: spent, as an unreadable one is.
                given = self._given_already(session, data)
                ready.append((position, None if given else self._translate(conn, data)))
        conn.make_room(sum(len(t[0]) + _FRAMING for _, t in ready if t is not None))
        for position, translated in ready:
            if translated is None:
                session.delivered = position  # given already, or unreadable: passed over
            else:
                self._write_payload(conn, session, position, *translated)

    def _write_positioned(
        self, conn: Connection, session: Session, position: int, data: bytes
    ) -> None:
        translated = None if self._given_already(session, data) else self._translate(conn, data)
        if translated is not None:
            self._write_payload(conn, session, position, *translated)
        elif position:
            # Given already, or unreadable in the socket's format (counted): the
            # position is spent, not a hole that a read of the stream would fill.
            session.delivered = position

    def _given_already(self, session: Session, data: bytes) -> bool:
        """Whether ``data`` (a relay frame) is a sending session's message at or
        before the newest of that sender's written to this socket (counted as a
        resend taken already); else it is the newest from now on."""
        origin = origin_key(data)
        if origin is None:
            return False
        sender, position = origin
        senders = session.senders
        if senders is None:
            senders = session.senders = {}
        last = senders.get(sender)
        if last is None:
            if len(senders) >= _SENDERS_KEPT:
                del senders[next(iter(senders))]  # the longest known
        elif position <= last:
            self._metrics.session_messages.labels("resent_taken").inc()
            return True
        senders[sender] = position
        return False

    def passed_over(self, conn: Connection, position: int, data: bytes) -> None:
        """A live message at ``position`` that cannot be written in the socket's
        format (counted by the caller): the position is spent, not a hole."""
        session = conn.session
        assert session is not None
        if position == session.delivered + 1 and not session.replaying:
            session.delivered = position
        else:  # held, or after a hole: passed over in turn (``_write_positioned``)
            self._deliver(conn, session, position, data)

    def _write_payload(
        self, conn: Connection, session: Session, position: int, payload: bytes, received_at: float
    ) -> None:
        """Write a message in the socket's format at ``position`` (0: unnumbered); a
        numbered one is the socket's newest position from now on."""
        if position:
            session.delivered = position
            acked = session.acked
            if acked > session.acked_written and session.inline_acks:
                # The acknowledgement due rides on the message: no frame of its own
                # (in request and response traffic nearly every one rides). What
                # ``_ack_written`` does but for leaving the socket among those due:
                # the tick drops it (a set's add and discard for every message).
                session.acked_written = acked
                session.ack_since = 0.0
                frame = sessionframe.message_acked(position, acked, payload)
            else:
                frame = sessionframe.message(position, payload)
        else:
            frame = sessionframe.unnumbered(payload)
        self._write(conn, frame, received_at)

    def proxy_ack(self, conn: Connection, position: int) -> None:
        """The proxy took every position up to ``position``: Redis may trim them."""
        session = conn.session
        assert session is not None
        # Never past what was written to it: a proxy that acknowledges ahead (a bug,
        # or a hostile client) must not trim what is on its way to it.
        if position > session.delivered:
            self._metrics.session_messages.labels("acked_ahead").inc()
            position = session.delivered
        if position <= session.proxy_acked:
            return
        session.proxy_acked = position
        # Passed on to Redis now if this session's last trim went ``TRIM_SPACING`` ago
        # or more; otherwise a later acknowledgement of the proxy's does, or a tick once
        # the last has waited a tick longer than that. (Here, not in a method of its
        # own: a proxy taking inline acknowledgements acknowledges with nearly every
        # message it sends.)
        #
        # Held for the tick, every session's trims went out at once, and Redis ran
        # them all (tens of microseconds each) before the messages written after them:
        # a burst every 50 ms ahead of live traffic. Passed on with the
        # acknowledgement that makes one due, they are spread as the proxies'
        # messages are.
        now = time.monotonic()
        if now - session.trimmed_at >= TRIM_SPACING and self._broker.ack_session_nowait(
            conn.agent, session.id, position
        ):
            self._trim_passed_on(conn, session, now)
        elif conn not in self._trims_due:  # waiting already: the tick is set for it
            self._trims_due.add(conn)
            due = session.trimmed_at + _TRIM_DUE_AFTER
            if self._tick is None or self._tick_due > due:
                self._arm(due)

    # ---- from the agent ---------------------------------------------------------

    def refused(self, conn: Connection, position: int) -> None:
        """The proxy's message at ``position`` will never be relayed (its outcome)."""
        session = conn.session
        assert session is not None
        self._settled(conn, session, position)

    def published(self, data: bytes, receivers: int) -> None:
        """A publish outcome: if a session sent it, its position is settled."""
        if receivers == -2:
            self._metrics.session_messages.labels("kept_away").inc()
        origin = session_origin(data)
        if origin is None:
            return
        if receivers == -1:
            self._metrics.session_messages.labels("resent_taken").inc()
        sender, position = origin
        conn = self._by_origin.get(sender)
        if conn is None:
            return
        session = conn.session
        if session is None:
            return
        self._settled(conn, session, position)

    def settle_refused(self, data: bytes) -> None:
        """Redis refused the message for good, for its target's keys alone: if a
        session sent it, its position is settled as any outcome's (sent again, it
        would be refused again)."""
        self.published(data, 0)

    def publish_dropped(self) -> None:
        """The publisher gave messages up: sockets whose messages may be among them
        are closed, so their proxies send them again to a node that can relay them."""
        for conn in list(self._by_origin.values()):
            session = conn.session
            if session is not None and session.outstanding:
                conn.request_close(CloseCode.TRY_AGAIN_LATER)

    # ---- acknowledgements, in ticks ---------------------------------------------

    def _settled(self, conn: Connection, session: Session, position: int) -> None:
        """``position`` has an outcome (once per message a session sends): move the
        acknowledgement over what is done, and acknowledge now, or on a tick once the
        oldest position not acknowledged has waited ACK_DELAY."""
        outstanding = session.outstanding
        if outstanding and outstanding[0] == position and not session.settled_early:
            # In order, as nearly every outcome comes: ``Session.settle`` without a
            # call (never backwards: a proxy that sends a position twice settles it
            # twice).
            del outstanding[0]
            if position > session.acked:
                session.acked = position
        else:
            session.settle(position)
        unwritten = session.acked - session.acked_written
        if unwritten >= ACK_EVERY:
            self._write_ack(conn, session)
        elif unwritten > 0 and not session.ack_since:
            # time.monotonic, not the loop's time: asyncio.get_running_loop() costs
            # a getpid() system call each time on Python 3.11.
            session.ack_since = time.monotonic()
            self._acks_due.add(conn)
            due = session.ack_since + _ACK_DUE_AFTER
            if self._tick is None or self._tick_due > due:
                self._arm(due)

    def acknowledge_now(self, conns: list[Connection]) -> None:
        """Write every acknowledgement due to these sockets' proxies at once (a drain
        closes them next, and their queues are flushed first)."""
        for conn in conns:
            session = conn.session
            if session is not None and session.acked > session.acked_written:
                self._write_ack(conn, session)

    def _write_ack(self, conn: Connection, session: Session) -> None:
        acked = session.acked
        # A closing socket takes no more frames (one written would count as a drop).
        if acked > session.acked_written and conn.close_code is None:
            self._ack_written(conn, session)
            self._write(conn, sessionframe.ack(acked), 0.0)
        else:
            session.ack_since = 0.0
            self._acks_due.discard(conn)

    def _ack_written(self, conn: Connection, session: Session) -> None:
        """Everything settled is acknowledged by the frame about to be written."""
        session.acked_written = session.acked
        session.ack_since = 0.0
        self._acks_due.discard(conn)

    def _trim_passed_on(self, conn: Connection, session: Session, now: float) -> None:
        """Everything the proxy acknowledged is on its way to Redis as of ``now``."""
        session.trimmed_at = now
        session.proxy_acked_sent = session.proxy_acked
        self._trims_due.discard(conn)

    def _arm(self, due: float) -> None:
        """Set the tick for ``due`` (``time.monotonic``; callers set it only when it
        is not set for sooner), at least ACK_TICK from now. One timer for every
        socket of the node (a timer each would wake an idle loop once per socket),
        set for what falls due first: woken every ACK_TICK while anything waited, a
        node whose sockets' acknowledgements ride on messages ran it twenty times a
        second to find nothing due, for a trim due a second later."""
        if self._tick is not None:
            self._tick.cancel()
        now = time.monotonic()
        delay = max(ACK_TICK, due - now)
        self._tick_due = now + delay
        self._tick = asyncio.get_running_loop().call_later(delay, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        now = time.monotonic()
        next_due = float("inf")
        for conn in list(self._acks_due):
            session = conn.session
            if session is None:
                self._acks_due.discard(conn)
            elif session.ack_since + _ACK_DUE_AFTER <= now:
                self._write_ack(conn, session)
            else:
                next_due = min(next_due, session.ack_since + _ACK_DUE_AFTER)
        to_redis: list[tuple[str, str, int]] = []
        for conn in list(self._trims_due):
            session = conn.session
            if session is None or session.proxy_acked <= session.proxy_acked_sent:
                self._trims_due.discard(conn)
            elif session.trimmed_at + _TRIM_DUE_AFTER <= now:
                self._trim_passed_on(conn, session, now)
                to_redis.append((conn.agent, session.id, session.proxy_acked))
            else:
                next_due = min(next_due, session.trimmed_at + _TRIM_DUE_AFTER)
        if to_redis:
            self._spawn(self._trim(to_redis))
        if next_due < float("inf"):
            self._arm(next_due)

    async def _trim(self, items: list[tuple[str, str, int]]) -> None:
        try:
            await self._broker.ack_sessions(items)
        except ConnectionError as exc:
            # Kept a while longer; the next acknowledgements trim it.
            log.debug("could not trim %d session streams: %s", len(items), exc)

    # ---- a name held by a socket without a session ---------------------------------

    def given_to_plain_holder(self, agent: str, position: int) -> None:
        """A socket without a session that holds ``agent`` was given the message the
        stream of the name's session keeps at ``position`` (so that session is
        away): end it, so that a resume of it is a gap, not a replay of what this
        socket was given; what it kept before that is lost. Asked at most once per
        ``_END_AWAY_EVERY`` per name."""
        now = time.monotonic()
        asked = self._ending_asked
        if now - asked.get(agent, -_END_AWAY_EVERY) < _END_AWAY_EVERY:
            return
        if len(asked) >= _ENDING_ASKED_KEPT:
            asked.clear()
        asked[agent] = now
        self._spawn(self._end_away(agent, position))

    async def _end_away(self, agent: str, position: int) -> None:
        try:
            lost = await self._broker.end_away_session(agent, position)
        except ConnectionError as exc:
            log.warning("could not end the away session of %s: %s", agent, exc)
            return
        if lost is not None:
            self._metrics.session_messages.labels("lost").inc(lost)
            log.warning(
                "session of %s ended: a socket without a session holds the name and was "
                "given what the session's stream kept from position %d (its resume will "
                "be a gap); %d message(s) kept before it, given to no socket, are lost",
                agent,
                position,
                lost,
                extra={"rate_key": agent},
            )

    def _spawn(self, coro: "asyncio._CoroutineLike[None]") -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- after a broker break, or a lapse ------------------------------------------

    def broker_back(self) -> None:
        """The broker is back: put back the sessions it may have lost."""
        self._reassert_held()

    def lapsed(self) -> None:
        """Another node took this one for dead (its heartbeat lapsed: a stall, a
        partition) and released its sessions for the window as if their sockets had
        ended: hold them again while their sockets last, and read what their streams
        kept meanwhile. Left so, a connected session expired with the window, and what
        was sent to it once its socket dropped later was lost."""
        self._reassert_held()

    def _reassert_held(self) -> None:
        conns = [c for c in self._by_origin.values() if c.session is not None]
        if conns:
            self._spawn(self._reassert(conns))

    async def _reassert(self, conns: list[Connection]) -> None:
        """A Redis that restarted empty no longer keeps what is sent to these
        sessions; a replica promoted without the newest writes numbers new messages
        from an older position, which would read as duplicates here. Each holder
        puts its session back, numbering after what its socket was given: nothing
        a connected socket holds is lost, so nothing is reported."""
        for start in range(0, len(conns), _REASSERT_BATCH):
            batch = [c for c in conns[start : start + _REASSERT_BATCH] if c.session is not None]
            try:
                await asyncio.gather(*(self._reassert_one(conn) for conn in batch))
            except ConnectionError as exc:
                log.warning("could not re-assert sessions (%s); the next return will", exc)
                return

    async def _reassert_one(self, conn: Connection) -> Reasserted | None:
        """Put ``conn``'s session back if Redis lost it, then read what its stream
        kept past the socket's newest position; None for a socket that has ended."""
        session = conn.session
        if session is None or conn.close_code is not None:
            return None
        found = await self._broker.reassert_session(
            conn.agent, session.id, session.epoch, conn.id, session.newest_known()
        )
        if found is Reasserted.ELSEWHERE:
            log.info("session of %s is held elsewhere now; closing %s", conn.agent, conn.id)
            conn.request_close(CloseCode.TAKEN_OVER)
            return found
        if not session.replaying:
            # What the break kept from this node (published while it was
            # resubscribing, or cut off in Redis' output buffer) is in the stream.
            session.replaying = True
            await self._fill(conn, session)
        return found

    def unkept(self, conn: Connection) -> None:
        """A message for ``conn``'s session came unnumbered though it is neither a
        transient frame nor a copy sent again: Redis did not know the session when
        it was published. Without a break to say so (``FLUSHALL``, an eviction, a
        key deleted), nothing else would put the session back, and what is sent
        while its socket is away would not be kept. Delivered as it is (counted
        ``unkept``); the session is put back, at most once per ``_UNKEPT_RECHECK``.
        """
        session = conn.session
        assert session is not None
        if not session.result:
            return  # resuming: published before the session was
        self._metrics.session_messages.labels("unkept").inc()
        now = time.monotonic()
        if now - session.unkept_at < _UNKEPT_RECHECK:
            return
        session.unkept_at = now
        self._spawn(self._put_back(conn))

    async def _put_back(self, conn: Connection) -> None:
        try:
            found = await self._reassert_one(conn)
        except ConnectionError as exc:
            log.warning("could not put back the session of %s: %s", conn.agent, exc)
            return
        if found is Reasserted.PUT_BACK:
            session = conn.session
            log.warning(
                "session of %s was gone from redis (its data lost or deleted) while its "
                "socket was connected: put back, numbering after position %d",
                conn.agent,
                session.newest_known() if session is not None else 0,
                extra={"rate_key": conn.agent},
            )

    def missed(self, conn: Connection) -> None:
        """A message for ``conn``'s session was not written while the socket's claim
        was unconfirmed (after a broker break, or while the cluster took this node
        for dead): the stream keeps it, and is read once the claim is confirmed. A
        later message would find the hole, but none may come: a client waiting for
        its answers sends nothing more."""
        self._missed.add(conn)

    def claims_confirmed(self, holds: Callable[[Connection], bool]) -> None:
        """This node's claims were confirmed: the sessions that missed messages read
        their streams (the ones still not holding wait for the next confirmation, or
        their close)."""
        missed, self._missed = self._missed, set()
        for conn in missed:
            session = conn.session
            if session is None or conn.close_code is not None:
                continue
            if not holds(conn):
                self._missed.add(conn)
            elif session.replaying:
                # What it missed may be past what the replay or fill under way reads.
                session.fill_after = True
            else:
                session.replaying = True
                self._spawn(self._fill(conn, session))

    # ---- the end ----------------------------------------------------------------

    async def ended(self, conn: Connection, *, held: bool) -> None:
        """The socket ended: keep its session for the window, unless a newer socket
        of the session holds it already (here or on another node)."""
        session = conn.session
        if session is None:
            return
        if self._by_origin.get(session.origin) is conn:
            del self._by_origin[session.origin]
        self._acks_due.discard(conn)
        self._trims_due.discard(conn)
        self._missed.discard(conn)
        if not held:
            return
        if session.proxy_acked > session.proxy_acked_sent:
            # What the proxy acknowledged and was still to be trimmed goes now: kept
            # for the window, the stream holds only what the proxy may not have taken
            # (what a socket without a session then takes the name from is lost).
            await self._trim([(conn.agent, session.id, session.proxy_acked)])
        try:
            await self._broker.release_sessions([(conn.agent, conn.id)], self.window)
        except ConnectionError as exc:
            log.warning("could not release the session of %s (%s): trying again", conn.agent, exc)
            self._unreleased[(conn.agent, conn.id)] = time.monotonic()
            if not self._releasing:
                self._releasing = True
                self._spawn(self._release_again())

    async def _release_again(self) -> None:
        """Release the sessions whose release failed (a Redis out of reach, a Redis
        Cluster moving their slot), each for what is left of its window from its
        socket's end, until none is left. A release finds the session held by
        another socket meanwhile (resumed) and leaves it alone."""
        delay = _RELEASE_AGAIN_FIRST
        try:
            while self._unreleased:
                await asyncio.sleep(delay)
                now = time.monotonic()
                pending = list(self._unreleased.items())
                outcomes = await asyncio.gather(
                    *(
                        self._broker.release_sessions(
                            [key], max(0.001, self.window - (now - ended_at))
                        )
                        for key, ended_at in pending
                    ),
                    return_exceptions=True,
                )
                failed = False
                for (key, _), outcome in zip(pending, outcomes, strict=True):
                    if isinstance(outcome, ConnectionError):
                        failed = True
                    elif isinstance(outcome, BaseException):
                        raise outcome
                    else:
                        del self._unreleased[key]
                delay = min(delay * 2, _RELEASE_AGAIN_MOST) if failed else _RELEASE_AGAIN_FIRST
        finally:
            self._releasing = False

    def sizes(self) -> dict[str, int]:
        """Entries per structure (for leak checks)."""
        return {
            "sessions": len(self._by_origin),
            "acks_due": len(self._acks_due),
            "trims_due": len(self._trims_due),
            "missed": len(self._missed),
            "unreleased": len(self._unreleased),
        }
