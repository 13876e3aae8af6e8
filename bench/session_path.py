"""What a session socket adds to the hub's own work per relayed message, without I/O.

Not a test: it prints a Markdown table, to be read, never asserted on. Run from the
repository root:

    .venv/bin/python bench/session_path.py [--repeat 31] [--iterations 20000]

Round trips of workload R between two sockets, through the hub's real code as two
nodes with sessions on would run them: ``Relay.route`` on the sender's node, the
publish outcome (``Hub._on_published``'s two steps), then ``Relay.deliver`` on the
receiver's node and the frame handed to a socket that takes it at once; a request
from ``a_1`` to ``b_1``, then its reply. With *session* sockets both ends named a
session and take acknowledgements inline, as the reconnecting proxies do: each
message a proxy sends carries its position and the acknowledgement of what it took
since its last (every message, in request and response traffic), each delivered
frame comes wrapped with its stream position as Redis' delivery script publishes
it, and the hub's acknowledgement rides on the next message it writes to the
proxy. A trim's command is built when one is due (``TRIM_SPACING``), not sent; the
hub's acknowledgement timer never gets a turn here. With *plain* sockets the same nodes relay
the same payloads with neither. Variants alternate run by run; each cell is the
median of ``--repeat`` runs' CPU time per relayed message (``time.process_time``).
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
from buswire.relayframe import pack_relay, pack_session_relay, pack_stored, sender_of

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
        request, reply = builder.pairs(payload, fmt, "a_1", "b_1")[0]
        self.request, self.reply = request.fill(42), reply.fill(42)
        self.fmt = fmt
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
        self.a = memory_connection("a_1", "b_1", Format(fmt))
        self.b = memory_connection("b_1", "a_1", Format(fmt))
        for conn in (self.a, self.b):
            conn.outlet = TakingSocket()
            self.holders[conn.agent] = conn
            claims.seen(conn.agent, conn.id)
        self.a_origin = sender_of("a_1", "s-a_1")
        self.b_origin = sender_of("b_1", "s-b_1")
        self.sent = 0

    async def start(self) -> None:
        if not self.with_sessions:
            return
        for conn in (self.a, self.b):
            conn.session = Session(f"s-{conn.agent}", 0, inline_acks=True)
            await self.sessions.resume(conn)
            self.sessions.started(conn)

    def _frames(self, iterations: int) -> list[tuple[bytes, bytes, bytes, bytes]]:
        """Per round trip: what each proxy writes (request, then reply) and what each
        receiving node gets from its channel, as the sockets' ``n``-th messages."""
        fmt = Format(self.fmt)
        sessions = self.with_sessions
        frames = []
        for n in range(self.sent + 1, self.sent + iterations + 1):
            if sessions:
                # Each side acknowledges, riding on its message, what it took last:
                # a_1 the reply before, b_1 the request it answers.
                request = (
                    sessionframe.message_acked(n, n - 1, self.request)
                    if n > 1
                    else sessionframe.message(n, self.request)
                )
                reply = sessionframe.message_acked(n, n, self.reply)
                to_b = pack_stored(n, self._relay(self.request, fmt, self.a_origin, n))
                to_a = pack_stored(n, self._relay(self.reply, fmt, self.b_origin, n))
            else:
                request, reply = self.request, self.reply
                to_b = pack_relay(fmt, NOW, self.request)
                to_a = pack_relay(fmt, NOW, self.reply)
            frames.append((request, to_b, reply, to_a))
        return frames

    @staticmethod
    def _relay(payload: bytes, fmt: Format, origin: bytes, position: int) -> bytes:
        return pack_session_relay(fmt, NOW, payload, origin, position)

    def run(self, iterations: int) -> float:
        """CPU µs per relayed message over ``iterations`` round trips."""
        frames = self._frames(iterations)
        self.sent += iterations
        route, deliver, published = self.relay.route, self.relay.deliver, self.published
        on_published = _on_published(self.relay, self.sessions)
        a, b = self.a, self.b
        to_a_channel, to_b_channel = message_channel("a_1"), message_channel("b_1")
        start = time.process_time()
        for request, to_b, reply, to_a in frames:
            route(a, request)
            on_published(to_b_channel, published.pop()[1], 1)
            deliver("b_1", to_b)
            route(b, reply)
            on_published(to_a_channel, published.pop()[1], 1)
            deliver("a_1", to_a)
        elapsed = time.process_time() - start
        return elapsed / (2 * iterations) * 1e6


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
