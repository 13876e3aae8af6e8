"""What a session socket adds to the hub's own work per relayed message, without I/O.

Not a test: it prints a Markdown table, to be read, never asserted on. Run from the
repository root:

    .venv/bin/python bench/session_path.py [--repeat 31] [--iterations 20000]

One message is relayed the way two nodes with sessions on would, through the hub's
real code: ``Relay.route`` on the sender's node, the publish outcome
(``Hub._on_published``'s two steps), then ``Relay.deliver`` on the receiver's node and
the frame handed to a socket that takes it at once. With *session* sockets both ends
named a session: the sender's frames carry positions, the delivered frame comes
wrapped with its stream position as Redis' delivery script publishes it, the hub
acknowledges the sender every 64 positions, and the receiver acknowledges what it
took every 64 (a trim's command is built for the first, not sent; the hub holds the
rest for its 50 ms tick, which this loop never gives a turn). With *plain*
sockets the same nodes relay the same payload with neither. Variants alternate run by
run; each cell is the median of ``--repeat`` runs' CPU time per message
(``time.process_time``).
"""

import time
import warnings
from collections.abc import Callable

from busbench.inmemory import TakingSocket, memory_connection
from busbench.pathbench import alternated, main

from bushub.broker.memory import MemoryBroker
from bushub.broker.sessionscripts import TRIM_SCRIPT, SessionLimits, trim_call
from bushub.claims import ClaimFence
from bushub.connection import Connection
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.relay import Relay
from bushub.sessions import Session, Sessions
from bushub.settings import Settings
from buswire import Format, message_channel, sessionframe
from buswire.relayframe import pack_stored

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from busbench.payloads import Builder

NOW = 1_700_000_000.25
LIMITS = SessionLimits(window=120.0, messages=1000, bytes=1 << 20)


class _TrimBuilding(MemoryBroker):
    """The in-process broker, except that a trim is built as the Redis broker builds
    it (its RESP command) and not carried out: the streams stay empty here."""

    def ack_session_nowait(self, agent: str, session: str, position: int) -> bool:
        return bool(TRIM_SCRIPT.call(*trim_call(agent, session, position), by_sha=True))


class _Case:
    """One payload in one format between two nodes with sessions on."""

    def __init__(self, builder: Builder, payload: str, fmt: str, *, sessions: bool) -> None:
        request, _ = builder.pairs(payload, fmt, "a_1", "b_1")[0]
        self.data = request.fill(42)
        self.with_sessions = sessions
        settings = Settings(node_id="bench", rate_messages=0, rate_bytes=0)
        metrics = Metrics()
        self.broker = _TrimBuilding()
        self.broker.keep_for_sessions(LIMITS)
        self.published: list[tuple[str, bytes]] = []
        self.holders: dict[str, Connection] = {}
        claims = ClaimFence()
        outbound = Outbound(metrics)
        self.relay = Relay(
            settings,
            metrics,
            self.holders,
            claims,
            lambda channel, data: self.published.append((channel, data)),
            outbound,
            clock=lambda: NOW,
        )
        self.sessions = Sessions(
            settings, self.broker, metrics, outbound.enqueue, self.relay.payload_for
        )
        self.relay.sessions = self.sessions
        self.sender = memory_connection("a_1", "b_1", Format(fmt))
        self.sender.outlet = TakingSocket()
        self.receiver = memory_connection("b_1", "a_1", Format(fmt))
        self.receiver.outlet = TakingSocket()
        self.holders["b_1"] = self.receiver
        claims.seen("b_1", self.receiver.id)
        self.sent = 0

    async def start(self) -> None:
        if not self.with_sessions:
            return
        for conn in (self.sender, self.receiver):
            conn.session = Session(f"s-{conn.agent}", 0)
            await self.sessions.resume(conn)
            self.sessions.started(conn)

    def _frames(self, iterations: int) -> list[tuple[bytes, bytes, bytes | None]]:
        """Per message: what the sender's socket reads, what the receiver's node gets
        from its channel, and the receiver's acknowledgement after it, if one is due."""
        frames = []
        for i in range(self.sent + 1, self.sent + iterations + 1):
            inbound = sessionframe.message(i, self.data) if self.with_sessions else self.data
            self.relay.route(self.sender, inbound)
            [(_, relay)] = self.published
            self.published.clear()
            # Delivered at the same positions the sender used: both count from 1.
            delivered = pack_stored(i, relay) if self.with_sessions else relay
            ack = sessionframe.ack(i) if self.with_sessions and i % 64 == 0 else None
            frames.append((inbound, delivered, ack))
        # Prepared, not relayed: the sender's session forgets those positions.
        if self.sender.session is not None:
            self.sender.session.outstanding.clear()
        return frames

    def run(self, iterations: int) -> float:
        """CPU µs per message over ``iterations`` relays."""
        frames = self._frames(iterations)
        self.sent += iterations
        route, deliver, published = self.relay.route, self.relay.deliver, self.published
        on_published = _on_published(self.relay, self.sessions)
        sender, receiver = self.sender, self.receiver
        channel = message_channel("b_1")
        start = time.process_time()
        for inbound, delivered, ack in frames:
            route(sender, inbound)
            on_published(channel, published.pop()[1], 1)
            deliver("b_1", delivered)
            if ack is not None:
                route(receiver, ack)
        elapsed = time.process_time() - start
        return elapsed / iterations * 1e6


def _on_published(relay: Relay, sessions: Sessions) -> Callable[[str, bytes, int], None]:
    """What ``Hub`` does with a publish outcome."""

    def on_published(channel: str, data: bytes, receivers: int) -> None:
        relay.published(channel, receivers)
        sessions.published(data, receivers)

    return on_published


async def _main(repeat: int, iterations: int) -> None:
    builder = Builder()
    payloads = ("task", "audio")
    cases = {
        (p, s): _Case(builder, p, "json", sessions=s == "session")
        for p in payloads
        for s in ("plain", "session")
    }
    for case in cases.values():
        await case.start()
    medians = alternated({key: case.run for key, case in cases.items()}, repeat, iterations)
    print("| payload (JSON) | plain µs/msg | session µs/msg | session - plain | session / plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for payload in payloads:
        plain = medians[(payload, "plain")]
        session = medians[(payload, "session")]
        print(
            f"| {payload} | {plain:.2f} | {session:.2f} | {session - plain:.2f} "
            f"| {session / plain:.2f}x |"
        )


if __name__ == "__main__":
    main(__doc__, _main)
