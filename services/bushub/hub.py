"""A hub node: local sockets on one side, broker channels on the other.

``Hub`` is the root that puts a node together and runs its life cycle: start, drain,
stop. The work is done by its parts, each built with what it needs passed in:

- ``Presence`` (``bushub.presence``): claims and takeover, holders and their broker
  records, peers and their announcements, the node's membership of the cluster;
- ``Heartbeat`` (``bushub.heartbeat``): the periodic pass, one heartbeat per node;
- ``Relay`` (``bushub.relay``): frames from sockets to agent channels and back;
- ``Outbound`` (``bushub.outbound``): every frame written to a socket, counted;
- ``Publisher`` (``bushub.publisher``): ordered, bounded publishing to the broker;
- ``Sessions`` (``bushub.sessions``): resume, replay and acknowledgements of the
  sockets of reconnecting proxies;
- ``Subscriptions`` (``bushub.subscriptions``): the node's channel subscriptions;
- ``Operators`` (``bushub.operators``): taps, console reports and sends by HTTP.

The hub routes what the broker delivers to the part it is for, and follows the
broker's state: while it is away the node is not ready; when it comes back, publishes
wait for every node to resubscribe and presence is re-recorded at once.
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from bushub import keepalive
from bushub.broker import Broker
from bushub.broker.refusals import describe
from bushub.broker.sessionscripts import SessionLimits
from bushub.brokerhealth import BrokerHealth
from bushub.closecodes import CloseCode
from bushub.connection import Connection
from bushub.gonesenders import GoneSenders
from bushub.heartbeat import Heartbeat
from bushub.limits import TokenBucket
from bushub.metrics import Metrics
from bushub.operators import Operators
from bushub.outbound import Outbound
from bushub.presence import PRESENCE_PREFIX, Presence
from bushub.publisher import Publisher
from bushub.relay import MESSAGE_PREFIX, Relay
from bushub.sessions import Sessions
from bushub.settings import Settings
from bushub.stopping import cancelled
from bushub.subscriptions import Subscriptions
from buswire import DropReason, message_channel
from buswire.channels import node_channel

log = logging.getLogger(__name__)

# After the broker comes back, publishes wait this long so that every node, each
# retrying on its own jittered backoff, has resubscribed its agents' channels.
RESUBSCRIBE_SETTLE = 1.0
# A background loop that failed is started again after this, doubling up to the
# maximum; one that then ran this long without failing starts from the first again.
RESTART_FIRST = 0.1
RESTART_MAX = 5.0
RESTART_RESET_AFTER = 60.0


def _call_later(
    delay: float, callback: Callable[..., object], *args: object
) -> asyncio.TimerHandle:
    # The running loop's, looked up when a timer is set: the hub is built before
    # the loop that serves it runs.
    return asyncio.get_running_loop().call_later(delay, callback, *args)


class Hub:
    """One node: its parts, its background tasks and its life cycle."""

    def __init__(self, settings: Settings, broker: Broker, metrics: Metrics) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        # Handshakes this node takes per second (``--accept-rate``).
        self.handshakes = TokenBucket(settings.accept_rate)
        self.broker = broker
        self.metrics = metrics
        self.draining = False
        self.health = BrokerHealth(metrics.redis_errors)
        self.publisher = Publisher(
            broker,
            settings.publish_buffer,
            self._on_published,
            self._on_publish_dropped,
            settle=RESUBSCRIBE_SETTLE,
            health=self.health,
            resend_prefix=MESSAGE_PREFIX,
            on_resent=lambda outcome, count: metrics.resent.labels(outcome).inc(count),
            on_key_refused=self._on_key_refused,
        )
        self.subscriptions = Subscriptions(broker)
        self.outbound = Outbound(metrics)
        self.presence = Presence(
            settings,
            broker,
            self.subscriptions,
            self.publisher.publish,
            self.outbound,
            metrics,
            _call_later,
            self.health,
        )
        self.heartbeat = Heartbeat(settings, broker, self.presence, self.health)
        self.relay = Relay(
            settings,
            metrics,
            self.presence.holders,
            self.presence.claims,
            self.publisher.publish,
            self.outbound,
            dialect_learned=self.presence.rewriter.changed,
        )
        self.sessions = Sessions(
            settings, broker, metrics, self.outbound.enqueue, self.relay.payload_for
        )
        self.relay.sessions = self.sessions
        self.heartbeat.on_lapsed = self.sessions.lapsed
        claims = self.presence.claims

        def confirmed() -> None:
            self.relay.claims_confirmed()
            self.sessions.claims_confirmed(lambda conn: claims.holds(conn.agent, conn.id))

        self.presence.on_confirmed = confirmed
        self.gone_senders = GoneSenders(
            broker, self.presence.connections, metrics, settings.resume_forget_every
        )
        self.operators = Operators(
            settings,
            broker,
            self.subscriptions,
            metrics,
            self.presence.holders,
            lambda: self.connection_count,
            self.readiness,
        )
        self.relay.taps = self.operators.recorder
        if self.sessions.enabled:
            broker.keep_for_sessions(
                SessionLimits(
                    settings.resume_window, settings.resume_messages, settings.resume_bytes
                )
            )
        self._tasks: set[asyncio.Task[None]] = set()
        # The start under way, and whether a signal asked to stop before it ended.
        self._starting: asyncio.Task[None] | None = None
        self._start_aborted = False
        self._broker_was_down = False
        broker.set_handlers(self._on_broker_message, self._on_broker_state)
        broker.on_subscribe_refused = self._subscribe_refused

    # ---- what the endpoint uses ---------------------------------------------

    @property
    def connection_count(self) -> int:
        """Sockets claiming or holding a name on this node."""
        return self.presence.connection_count

    @property
    def ready(self) -> bool:
        """Broker reachable and taking writes, background loops running, not draining."""
        return self.broker.up and not self.draining and self.health.problem is None

    def readiness(self) -> dict[str, Any]:
        """The body of ``/readyz``: ready, and what stands in its way."""
        return {
            "ready": self.ready,
            "broker_up": self.broker.up,
            "draining": self.draining,
            "broker_refuses": self.health.problem,  # reachable, but writes refused
        }

    async def claim(self, conn: Connection) -> bool:
        """Claim ``conn.agent`` before the socket is accepted (see ``Presence.claim``),
        and hold the name once the claim won.

        The socket subscribes its message channel first: once the claim has come
        back on the same connection, that subscription is in force. So a socket is
        reachable before its client is told it is open (what is sent to it from then
        on waits in its queue until the accept), and a session's resume misses
        nothing in the stream that is not then delivered live.

        Returns:
            False when a newer claim beat this one; the socket must be refused.
        """
        conn.subscribed = True
        await self.subscriptions.acquire(message_channel(conn.agent))
        if not await self.presence.claim(conn):
            return False
        self.presence.hold(conn)
        return True

    async def attach(self, conn: Connection) -> None:
        """Start serving an accepted socket: record and announce it."""
        conn.opened()
        self.metrics.connections.inc()
        self.metrics.connections_opened.inc()
        self.metrics.agents.set(len(self.presence.holders))
        await self.presence.announce(conn)

    async def detach(self, conn: Connection, *, attached: bool) -> None:
        """Forget a socket that has ended; withdraw its presence if it held the name."""
        was_holder = self.presence.let_go(conn)
        self.outbound.lost(conn)
        self.relay.let_go(conn)
        session = conn.session
        try:
            if conn.subscribed:
                conn.subscribed = False
                await self.subscriptions.release(message_channel(conn.agent))
            if session is not None:
                # Resumed is enough: a client gone between the resume and the accept
                # left its session held (no expiry) for good.
                await self.sessions.ended(conn, held=was_holder and bool(session.result))
            if was_holder:  # held from its claim on, accepted or not
                self.metrics.agents.set(len(self.presence.holders))
            if attached:
                self.metrics.connections.dec()
                await self.presence.withdraw(conn)
            await self.presence.unclaim(conn)
        finally:
            conn.forgotten()

    # ---- life cycle ---------------------------------------------------------

    async def start(self) -> bool:
        """Connect the broker and start the background tasks; False when
        ``abort_start`` came first (nothing is left running)."""
        if self._start_aborted:
            return False
        self._starting = asyncio.ensure_future(self._start())
        try:
            await self._starting
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._start_aborted and not (task is not None and task.cancelling()):
                return False
            raise
        finally:
            self._starting = None
        return True

    def abort_start(self) -> None:
        """Stop a start still under way (a signal while Redis cannot be reached or
        refuses the node): waiting on the broker would hold the process for good."""
        self._start_aborted = True
        if self._starting is not None:
            self._starting.cancel()

    async def _start(self) -> None:
        await self.broker.start()
        self.metrics.redis_up.set(1 if self.broker.up else 0)
        # The node's own channel: a takeover elsewhere asks whether it is there.
        await self.subscriptions.acquire(node_channel(self.node_id))
        await self.operators.start()
        await self.heartbeat.join()
        self._spawn(self._supervised(self.publisher.run, "publisher"), "publisher")
        self._spawn(
            self._supervised(self.heartbeat.run, "presence-heartbeat"), "presence-heartbeat"
        )
        if self.settings.keepalive:
            self._spawn(self._supervised(self._keepalive, "keepalive"), "keepalive")
        if self.sessions.enabled and self.settings.resume_forget_every:
            self._spawn(self._supervised(self.gone_senders.run, "gone-senders"), "gone-senders")

    async def _keepalive(self) -> None:
        await keepalive.run(self.presence.connections, self.settings.keepalive)

    def _spawn(self, coro: "asyncio._CoroutineLike[None]", name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s died", task.get_name(), exc_info=task.exception())
            # A dead reconcile loop would silently freeze presence: stop serving.
            self.draining = True

    async def _supervised(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run a background loop for the node's life. One that fails is logged, holds
        readiness down while it waits, and is started again: a node whose presence
        loop died would otherwise serve on with its records expiring."""
        loop = asyncio.get_running_loop()
        delay = RESTART_FIRST
        while True:
            started = loop.time()
            try:
                await run()
                return
            except Exception:
                if loop.time() - started > RESTART_RESET_AFTER:
                    delay = RESTART_FIRST
                log.exception("background task %s failed; restarting in %.1fs", name, delay)
                self.health.failed(f"task {name}", f"background task {name} restarting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)
            self.health.accepted(f"task {name}")

    @property
    def task_count(self) -> int:
        """Background tasks running (for leak checks)."""
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Stop taking sockets, flush and close open ones with 1012, withdraw presence.

        Args:
            timeout: Seconds to wait for queues to flush and sockets to close.
        """
        conns = self.presence.connections()
        self.operators.streams.end_all()  # the taps this node serves end now
        if self.draining and not conns:
            return
        self.draining = True
        log.info("draining %d connections", len(conns))
        # What a session's proxy sent and the broker took is acknowledged now, ahead
        # of the close, rather than after ACK_DELAY: not sent again after the reconnect.
        self.sessions.acknowledge_now(conns)
        for conn in conns:
            conn.request_close(CloseCode.SERVICE_RESTART, flush=True)
        if conns:
            done = asyncio.gather(*(c.closed.wait() for c in conns))
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                log.warning(
                    "drain timeout: %d sockets still open",
                    sum(not c.closed.is_set() for c in conns),
                )
        try:
            await asyncio.wait_for(self.publisher.flushed(), timeout=max(0.1, timeout / 2))
        except TimeoutError:
            log.warning("drain: %d publishes not flushed", self.publisher.pending)

    async def stop(self) -> None:
        """Cancel background tasks and close the broker; safe to call twice."""
        await cancelled(*self._tasks)
        self.publisher.close()
        await self.operators.stop()
        self.presence.peers.cancel_timers()
        await self.heartbeat.leave()
        await self.broker.close()

    # ---- the broker's side --------------------------------------------------

    def _on_broker_message(self, channel: str, data: bytes) -> None:
        if channel.startswith(MESSAGE_PREFIX):
            self.relay.deliver(channel[len(MESSAGE_PREFIX) + 1 : -1], data)
        elif channel.startswith(PRESENCE_PREFIX):
            self.presence.on_event(channel[len(PRESENCE_PREFIX) + 1 : -1], data)
        else:
            self.operators.on_message(channel, data)

    def _subscribe_refused(self, error: Exception) -> None:
        # The agents already here keep hearing (Redis keeps what it subscribed); a new
        # one's channel was refused, so the node is not ready until the heartbeat's
        # probe has every channel confirmed again (BrokerHealth.probe_subscribe).
        self.health.refused("subscribe", error)

    def _on_broker_state(self, up: bool) -> None:
        self.metrics.redis_up.set(1 if up else 0)
        self.presence.broker_state_changed(up)
        if not up and not self._broker_was_down:
            self.publisher.broker_lost()
        if up and self._broker_was_down:
            log.info(
                "broker back: holding publishes %.1fs while nodes resubscribe", RESUBSCRIBE_SETTLE
            )
            self.publisher.hold(RESUBSCRIBE_SETTLE)
            self.metrics.redis_reconnects.inc()
            self.heartbeat.reconcile_soon()  # re-record presence at once
            self.sessions.broker_back()
        self._broker_was_down = not up

    def _on_published(self, channel: str, data: bytes, receivers: int) -> None:
        self.relay.published(channel, receivers)
        self.sessions.published(data, receivers)

    def _on_publish_dropped(self, reason: str, count: int) -> None:
        self.metrics.messages_dropped.labels(reason).inc(count)
        self.sessions.publish_dropped()

    def _on_key_refused(self, channel: str, data: bytes, error: object) -> None:
        """Redis refused a message for what its target's keys hold (one written by
        hand with another type): that target's messages fail, no other's. Counted and
        logged; the node stays ready and no socket is closed, and a session that sent
        it has the position settled: its proxy would only send it into the same error
        again."""
        self.metrics.messages_dropped.labels(DropReason.BROKER_REFUSED).inc()
        # One template: the log handler lets it through once per 10 s.
        log.warning(
            "redis refused a message on %s for what the target's keys hold: %s; "
            "dropped (a key of the hub's written by hand?)",
            channel,
            describe(error),
        )
        self.sessions.settle_refused(data)
