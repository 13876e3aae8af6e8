"""Relaying messages: frames from sockets to agent channels, and back to sockets.

A frame read from a socket is checked (size, rate, format, envelope, type policy,
target) and published on its target's message channel, wrapped in a relay frame that
carries its format and receive time (docs/protocol.md, Routing). A relay frame from a
channel is translated to the format of the local socket holding the agent, if any, and
handed to the outbound side. Every frame that goes no further is counted with its
reason; nothing else on the socket is affected. A frame marked as sent again after a
broker break is dropped if this node delivered it already (recentframes.py).

The relay does no I/O of its own: it is given the publish function, the map of local
holders and the outbound writer, so a test drives it with bytes.
"""

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from bushub.claims import ClaimFence
from bushub.closecodes import CloseCode
from bushub.connection import Connection
from bushub.limits import take_or_wait
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.recentframes import RecentFrames
from bushub.settings import Settings
from bushub.unconfirmed import UnconfirmedFrames
from buswire import (
    DecodeError,
    DropReason,
    Format,
    is_registry_type,
    message_channel,
    sessionframe,
    sniff_format,
    translate,
    validate_agent_name,
)
from buswire.codec import envelope_of, load_tree
from buswire.complexity import container_budget
from buswire.envelope import Envelope
from buswire.relayframe import (
    TRANSIENT,
    as_first_sent,
    is_kept,
    pack_relay,
    pack_session_relay,
    relay_of,
    unpack_relay,
)
from buswire.sessionframe import (
    ACKED_HEAD,
    ACKED_MESSAGE_KIND,
    MESSAGE_HEAD,
    acked_message,
    message_position,
)

if TYPE_CHECKING:
    from bushub.sessions import Sessions
    from bushub.taps import TapRecorder

log = logging.getLogger(__name__)

MESSAGE_PREFIX = message_channel("")[:-2]
# The bridged pipeline frame of both dialects (``--transient-frames``).
_FRAME_MESSAGE = ".BusFrameMessage"

Publish = Callable[[str, bytes], None]


class Relay:
    """Routing of frames from sockets, and delivery of frames to them.

    Args:
        settings: Frame size limit and type policy.
        metrics: Where frames received and dropped are counted.
        holders: The local socket holding each agent name (kept by presence).
        claims: The newest claim seen per name (kept by presence): a holder gets a
            message only while its claim is the newest.
        publish: Publishes one relay frame on a channel; never blocks.
        outbound: Writes frames to sockets.
        clock: Wall-clock seconds, stamped on relayed frames for the latency metric.
        dialect_learned: Told of a socket whose dialect its first message showed.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        holders: Mapping[str, Connection],
        claims: ClaimFence,
        publish: Publish,
        outbound: Outbound,
        clock: Callable[[], float] = time.time,
        dialect_learned: Callable[[Connection], None] = lambda conn: None,
    ) -> None:
        self._dialect_learned = dialect_learned
        self._max_message_bytes = settings.max_message_bytes
        self._transient_frames = settings.transient_frames
        self._bytes_per_container = settings.bytes_per_container
        self._policy = settings.type_policy()
        self._metrics = metrics
        self._holders = holders
        self._claims = claims
        self._publish = publish
        self._outbound = outbound
        # What was delivered here lately, to drop a copy sent again after a break.
        # Kept frames are recorded with their stream position and looked up as
        # published (a copy sent again is not kept).
        self._recent = RecentFrames(key=relay_of)
        # For plain sockets whose claim a broker break left unconfirmed.
        unconfirmed = metrics.messages_dropped.labels(DropReason.UNCONFIRMED)
        self._unconfirmed = UnconfirmedFrames(settings.queue_bytes, unconfirmed.inc)
        self._clock = clock
        # Set by the hub: sockets that named a session are framed and numbered.
        self.sessions: Sessions | None = None
        # Set by the hub: taps see what is relayed of the agents they watch.
        self.taps: TapRecorder | None = None

    def route(self, conn: Connection, data: bytes) -> float:
        """Route one frame received on ``conn``: decode the envelope, publish.

        Undecodable, oversize or disallowed frames are dropped and counted here;
        nothing else on the connection is affected.

        Returns:
            0.0, or the seconds to wait before routing this same frame again: a
            session's message over the socket's rate is held back, not dropped (its
            proxy forgets what the hub acknowledges, and a refusal is acknowledged),
            so the caller reads nothing more from the socket until then.
        """
        session = conn.session
        if session is None:
            self._route(conn, data, None, 0)
            return 0.0
        sessions = self.sessions
        assert sessions is not None
        # A proxy taking inline acknowledgements sends nearly every message with its
        # own riding on it: that kind is read first.
        if data[:1] == ACKED_MESSAGE_KIND:
            position, acked = acked_message(data)
            head = ACKED_HEAD
        else:
            position, acked = message_position(data), 0
            head = MESSAGE_HEAD
        if not position:
            return self._session_control(conn, data)
        size = len(data) - head
        # The bytes' burst fits the largest message allowed, so any wait is finite; a
        # larger one is dropped as oversize below, having cost the socket as much as
        # the largest (a flood of them went through at hundreds of MB/s).
        most = self._max_message_bytes
        wait = take_or_wait(conn.message_rate, conn.byte_rate, size if size < most else most)
        if wait:
            self._metrics.session_messages.labels("throttled").inc()
            return wait
        if acked:
            sessions.proxy_ack(conn, acked)
        # On its way, its outcome to follow (``Sessions.published`` or ``refused``
        # settles it): appended here, once a message, not in a call.
        session.outstanding.append(position)
        if not self._route(conn, data[head:], session.origin, position):
            sessions.refused(conn, position)
        return 0.0

    def _session_control(self, conn: Connection, data: bytes) -> float:
        """A session socket's frame that is not a message at a position: the proxy's
        acknowledgement, or a frame refused. Either counts against the socket's rate,
        as a message does, so that a flood of them is held back as well (the seconds
        to wait are returned, as by ``route``)."""
        assert self.sessions is not None
        wait = self._session_rate(conn, data)
        if wait:
            return wait
        try:
            frame = sessionframe.decode(data)
        except DecodeError as exc:
            self._received_and_dropped(conn, exc.reason, len(data))
            return 0.0
        if frame.kind is sessionframe.Kind.ACK:
            self.sessions.proxy_ack(conn, frame.position)
            return 0.0
        self._received_and_dropped(conn, DropReason.MALFORMED, len(data))
        return 0.0

    def _route(self, conn: Connection, data: bytes, origin: bytes | None, position: int) -> bool:
        """Check and publish one message; True once it is handed to the publisher.

        Args:
            origin: The sending session (its agent and id), for a session's message.
            position: Its position in the sending session (with ``origin``).
        """
        metrics = self._metrics
        traffic = metrics.traffic
        traffic.bytes_received += len(data)
        conn.messages_in += 1
        if len(data) > self._max_message_bytes:
            self._received_and_dropped(conn, DropReason.OVERSIZE, len(data))
            if origin is None:
                self._overdrawn(conn, self._max_message_bytes)
            return False
        # A session's message has passed the rate already (``route``).
        if origin is None and take_or_wait(conn.message_rate, conn.byte_rate, len(data)):
            self._received_and_dropped(conn, DropReason.RATE_LIMITED, len(data))
            self._overdrawn(conn, 0)
            return False
        fmt = conn.format
        if not conn.format_confirmed:
            sniffed = sniff_format(data)
            if sniffed is None:
                self._received_and_dropped(conn, DropReason.MALFORMED, len(data))
                return False
            if sniffed is not fmt:
                if conn.format_declared:
                    self._received_and_dropped(conn, DropReason.FORMAT_MISMATCH, len(data))
                    conn.request_close(CloseCode.INVALID_DATA)
                    return False
                fmt = sniffed
        traffic.received[fmt.value] += 1
        budget = container_budget(
            len(data), self._bytes_per_container, msgpack=fmt is Format.MSGPACK
        )
        tree: Any = None
        envelope: Envelope | None = None
        try:
            tree = load_tree(data, fmt, budget)
            if not conn.format_confirmed:
                # Only a frame that parses settles the format: one broken frame that
                # merely starts like MsgPack must not switch a JSON client over.
                conn.format = fmt
                conn.format_confirmed = True
            envelope = envelope_of(tree)
            if is_registry_type(envelope.type_name):
                # The hub speaks for presence itself.
                raise DecodeError(DropReason.REGISTRY)
            self._policy.check(tree, budget)
            target = envelope.target or conn.peer
            if target is None:
                raise DecodeError(DropReason.NO_ROUTE)
            channel = conn.routes.get(target)
            if channel is None:
                validate_agent_name(target)
        except DecodeError as exc:
            self._refused(conn, exc.reason, len(data), fmt, tree, envelope)
            return False
        if conn.dialect is None and envelope.dialect is not None:
            conn.dialect = envelope.dialect
            self._dialect_learned(conn)
        if channel is None:
            if not conn.grant.may_address(target):
                reason = DropReason.TARGET_NOT_ALLOWED
                self._refused(conn, reason, len(data), fmt, tree, envelope, target)
                return False
            channel = conn.remember_route(target, message_channel(target))
        if conn.sources is not None and not conn.may_send_as(envelope.source):
            reason = DropReason.SOURCE_NOT_ALLOWED
            self._refused(conn, reason, len(data), fmt, tree, envelope, target)
            return False
        transient = self._transient_frames and envelope.type_name.endswith(_FRAME_MESSAGE)
        if origin is None:
            relay = pack_relay(conn.format, self._clock(), data, transient=transient)
        else:
            relay = pack_session_relay(
                conn.format, self._clock(), data, origin, position, transient=transient
            )
        self._publish(channel, relay)
        taps = self.taps
        if taps is not None and taps.tapped:
            taps.seen(conn.agent, envelope.type_name, envelope.source, target, tree, len(data), fmt)
        return True

    def refuse_text(self, conn: Connection, data: bytes) -> float:
        """A text frame on a session socket, whose frames are binary: dropped
        ``malformed`` (a session frame in it was taken as one before). It costs the
        socket's rate as a message does, so that a flood of them is held back as
        well: the seconds to wait before reading on are returned, as by ``route``."""
        self._received_and_dropped(conn, DropReason.MALFORMED, len(data))
        return self._session_rate(conn, data)

    def _session_rate(self, conn: Connection, data: bytes) -> float:
        """Take a session socket's frame that is not a message from its rate: the
        seconds to wait before reading on (counted ``throttled``), or 0."""
        wait = take_or_wait(
            conn.message_rate, conn.byte_rate, min(len(data), self._max_message_bytes)
        )
        if wait:
            self._metrics.session_messages.labels("throttled").inc()
        return wait

    def _overdrawn(self, conn: Connection, size: int) -> None:
        """A plain socket's frame dropped over its rate, or over the size limit
        (``size``: what it costs the bytes' rate, the largest message's). It takes
        from the socket's budget of extra frames and the bytes; past them the
        socket's reading is held until they allow a frame again. A session's
        frames are held back before this (``route``)."""
        wait = conn.frame_rate.spend()
        if size:
            wait = conn.byte_rate.spend(size) or wait
        if wait and conn.throttle is not None:
            self._metrics.frames_throttled.labels("refused").inc()
            conn.throttle()

    def _received_and_dropped(self, conn: Connection, reason: DropReason, size: int) -> None:
        """A frame refused before it was decoded: counted as received, and dropped."""
        self._metrics.traffic.received[conn.format.value] += 1
        self._refused(conn, reason, size, conn.format)

    def _refused(
        self,
        conn: Connection,
        reason: DropReason,
        size: int,
        fmt: Format,
        tree: Any = None,
        envelope: Envelope | None = None,
        target: str | None = None,
    ) -> None:
        """Count a frame from ``conn`` the node will not relay, and show it to taps
        with what was read of it (docs/protocol.md, Operator API)."""
        conn.dropped += 1
        self._metrics.messages_dropped.labels(reason).inc()
        taps = self.taps
        # A client's registry message is not refused but answered for: the hub
        # speaks for presence itself, and a tap would show every one of them.
        if taps is not None and taps.tapped and reason is not DropReason.REGISTRY:
            type_name = source = None
            if envelope is not None:
                type_name, source = envelope.type_name, envelope.source
                # Untargeted, it was for the socket's peer (a bridged frame): shown
                # in the peer's tap too, as where it was going.
                target = target or envelope.target or conn.peer
            taps.seen(conn.agent, type_name, source, target, tree, size, fmt, str(reason))

    def deliver(self, agent: str, data: bytes) -> None:
        """Hand a relay frame from ``agent``'s channel to the local socket holding it."""
        conn = self._holders.get(agent)
        if conn is None:
            if is_kept(data):
                # Its session's socket left this node (the subscription outlives it a
                # moment): the stream keeps it for the session's resume, which
                # delivers it, so it is not dropped (received = delivered + dropped).
                self._metrics.session_messages.labels("kept_away").inc()
            else:
                self._metrics.messages_dropped.labels(DropReason.NO_LOCAL_AGENT).inc()
            return
        held = self._unconfirmed
        if held.waiting_for and conn in held.waiting_for:
            held.hold(conn, data)  # behind those held before it
            return
        if not self._claims.holds(agent, conn.id):
            # A newer claim of the name came first in the broker's order: the message
            # is the newer socket's (on whichever node), and this one is being closed.
            # Or, after a broker break, the socket's claim is not confirmed yet.
            if conn.close_code is not None:
                self._metrics.messages_dropped.labels(DropReason.CLOSING).inc()
            elif conn.session is None and self._claims.unconfirmed(agent):
                held.hold(conn, data)  # delivered once it is (``claims_confirmed``)
            elif conn.session is None or not is_kept(data):
                self._metrics.messages_dropped.labels(DropReason.UNCONFIRMED).inc()
            if conn.close_code is None and conn.session is not None:
                assert self.sessions is not None
                # Its stream keeps a numbered one, read (and delivered, so not
                # counted dropped) once the claim is confirmed.
                self.sessions.missed(conn)
            return
        try:
            frame = unpack_relay(data)
        except DecodeError as exc:
            self._metrics.messages_dropped.labels(exc.reason).inc()
            return
        try:
            payload = (
                frame.payload
                if frame.fmt is conn.format
                else self._translated(frame.payload, frame.fmt, conn.format)
            )
        except DecodeError as exc:
            self._metrics.messages_dropped.labels(exc.reason).inc()
            # Valid where it came in, it cannot be written in this socket's format
            # (a JSON integer past 64 bits for MsgPack, bytes that base64 makes too
            # large): its sender was told it went through, so say so here.
            log.warning(
                "a message for %s cannot be written in %s (%s): dropped",
                agent,
                conn.format.value,
                exc,
                extra={"rate_key": agent},
            )
            if frame.position and conn.session is not None:
                assert self.sessions is not None
                self.sessions.passed_over(conn, frame.position, data)
            return
        if frame.resent and not frame.position:
            # Sent again after a broker break: delivered here already, or lost then.
            # A copy is never kept at a position; on a session socket it is one the
            # delivery script let through unnumbered, as Redis had lost the session's
            # stream, so this may be all that is left of it.
            data = as_first_sent(data)
            if self._seen_again(data):
                return
        elif not frame.position and self._recent.holds_lately(data):
            # The original of a copy sent again after a broker break, delivered before
            # it: a primary that hung (not died) ran it when it woke, and Redis Cluster
            # passed it on to its successor's subscribers, seconds late.
            self._metrics.resent.labels("duplicate").inc()
            return
        sessions = self.sessions
        if conn.session is not None:
            assert sessions is not None
            if not frame.position and not frame.resent and not data[1] & TRANSIENT:
                # Not kept, yet nothing said not to keep it: Redis lost the session.
                sessions.unkept(conn)
            sessions.deliver(conn, frame.position, data, payload, frame.received_at)
        else:
            self._outbound.enqueue(conn, payload, frame.received_at)
            if frame.position and sessions is not None:
                # Numbered: a session of the name is away, and its stream keeps this.
                sessions.given_to_plain_holder(agent, frame.position)
        self._recent.add(data)

    def claims_confirmed(self) -> None:
        """This node's claims were confirmed after a broker break: what was held for
        plain sockets now confirmed is delivered, in order; sockets that ended or
        lost their name have theirs dropped; the others wait for the next
        confirmation (or their close)."""
        held = self._unconfirmed
        for conn in held.waiting():
            if conn.close_code is not None or self._holders.get(conn.agent) is not conn:
                held.let_go(conn)
            elif self._claims.holds(conn.agent, conn.id):
                for data in held.take(conn):
                    self.deliver(conn.agent, data)
            elif not self._claims.unconfirmed(conn.agent):
                held.let_go(conn)  # a newer claim came: they were for that socket

    def let_go(self, conn: Connection) -> None:
        """``conn`` ended: what was held for it is dropped."""
        self._unconfirmed.let_go(conn)

    def _seen_again(self, original: bytes) -> bool:
        """Whether a frame sent again (as first sent) was delivered here already;
        counted either way."""
        seen = self._recent.seen(original)
        self._metrics.resent.labels("duplicate" if seen else "delivered").inc()
        return seen

    def payload_for(self, conn: Connection, data: bytes) -> tuple[bytes, float] | None:
        """A relay frame's payload in ``conn``'s format, and when it was received;
        None (counted) when it cannot be read."""
        try:
            frame = unpack_relay(data)
            return self._translated(frame.payload, frame.fmt, conn.format), frame.received_at
        except DecodeError as exc:
            self._metrics.messages_dropped.labels(exc.reason).inc()
            return None

    def _translated(self, payload: bytes, source: Format, target: Format) -> bytes:
        """``payload`` in ``target``'s format, within ``--max-message-bytes``.

        A frame that came in within the bound can leave past it in another format
        (bytes as base64 in JSON grow by a third; a MsgPack float is 9 bytes against
        JSON's 3 for ``0.5``), and a client takes no frame over its own limit (the
        stock proxies': 1 MiB, the bound's default): written, it failed the receiving
        connection, and a session's proxy, resumed, was given it again, for good.

        Raises:
            DecodeError: it cannot be written in ``target``, or not within the bound
                (``oversize``).
        """
        if source is target:
            return payload  # within the bound: checked as it came in
        translated = translate(payload, source, target)
        if len(translated) > self._max_message_bytes:
            raise DecodeError(
                DropReason.OVERSIZE,
                f"{len(translated)} bytes in {target.value}, over --max-message-bytes",
            )
        return translated

    def published(self, channel: str, receivers: int) -> None:
        """Count a relay frame that no node was subscribed to receive."""
        if receivers == 0 and channel.startswith(MESSAGE_PREFIX):
            self._metrics.messages_dropped.labels(DropReason.UNDELIVERABLE).inc()
