"""Workload R over session sockets: what a reconnecting proxy's session costs the hub.

``SessionPairsRun`` is the load generator's ``PairsRun`` with both ends of every pair
opened as session sockets (docs/protocol.md, Sessions): the URL carries
``session=<random id>&received=0``, every message sent is framed with
``sessionframe.message`` at the socket's next send position (1, 2, 3, ...), every frame
received is read with ``sessionframe.message_position`` or ``acked_message`` (a message
at a position is checked as before) or else split with ``sessionframe.decode`` (an
unnumbered one is an announcement, an acknowledgement of our sends is counted and
ignored), and what was taken is acknowledged with the real proxy's policy
(``busclient.session.Receiver``: at least every 64 messages or 200 ms; the job's
``ack_every`` and ``ack_delay`` change it, for trials), riding on the next message sent
when the hub takes inline acknowledgements, as the proxy's do. Count and age are
checked on each message taken, and the age again by one sweep every ``SWEEP_S`` over
all sockets (the proxy arms a timer per socket instead: the same acknowledgements,
less work for the generator).

The sockets never reconnect: this measures the cost of sessions in steady state.
"""

import asyncio
import secrets
import time
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from busbench.loadgen import Counters, Pair, PairsRun, now_ns
from busclient.session import ACK_DELAY, ACK_EVERY, Receiver, session_url
from buswire import sessionframe
from buswire.errors import DecodeError

SWEEP_S = 0.05
_UNNUMBERED, _ACK = sessionframe.Kind.UNNUMBERED, sessionframe.Kind.ACK


class SessionEnd:
    """One session socket's positions: what it sent, what it took and acknowledged."""

    __slots__ = ("inline", "receiver", "sent", "ws")

    def __init__(
        self, ws: ClientConnection, ack_every: int, ack_delay: float, inline: bool
    ) -> None:
        self.ws = ws
        self.sent = 0
        self.receiver = Receiver(ack_every, ack_delay)
        self.inline = inline


class SessionPairsRun(PairsRun):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job)
        self.ends: dict[ClientConnection, SessionEnd] = {}
        self.resume: dict[str, int] = {}
        self.acks_sent = 0
        self.acks_inline = 0
        self.acks_received = 0
        self.unnumbered = 0
        self.duplicates = 0
        self.malformed = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.ack_every: int = job.get("ack_every", ACK_EVERY)
        self.ack_delay: float = job.get("ack_delay", ACK_DELAY)

    # ---- connections ------------------------------------------------------

    def _url(self, base: str, name: str, peer: str, query: str) -> str:
        return session_url(super()._url(base, name, peer, query), secrets.token_urlsafe(12), 0)

    async def _open(self, url: str) -> ClientConnection:
        ws = await super()._open(url)
        header = ws.response.headers.get(sessionframe.RESUME_HEADER) if ws.response else None
        result = sessionframe.parse_resume_header(header)[0] if header else "none"
        self.resume[result] = self.resume.get(result, 0) + 1
        inline = sessionframe.takes_inline_acks(header) if header else False
        self.ends[ws] = SessionEnd(ws, self.ack_every, self.ack_delay, inline)
        return ws

    async def _first_message(self, ws: ClientConnection, counters: Counters) -> None:
        """The registry message comes first, unnumbered (the hub's own announcement)."""
        data = await asyncio.wait_for(ws.recv(), timeout=20)
        frame = sessionframe.decode(data if isinstance(data, bytes) else data.encode())
        if frame.kind is not _UNNUMBERED or b"Registry" not in frame.payload:
            raise RuntimeError(f"first frame is not an unnumbered registry: {data[:80]!r}")
        counters.registry += 1

    async def connect_set(self, spec: dict[str, Any]) -> None:
        await super().connect_set(spec)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
            self.tasks.append(self._sweeper)

    # ---- the framing ------------------------------------------------------

    async def _send(self, pair: Pair, ph: Any) -> None:
        ws = pair.a
        assert ws is not None
        await self._out(self.ends[ws], self._request(pair, ph))

    async def _out(self, end: SessionEnd, payload: bytes) -> None:
        end.sent += 1
        acked = end.receiver.ride() if end.inline else 0
        if acked:
            self.acks_inline += 1
            await end.ws.send(sessionframe.message_acked(end.sent, acked, payload))
            return
        await end.ws.send(sessionframe.message(end.sent, payload))

    def _payload(self, end: SessionEnd, data: bytes, now: float) -> bytes | None:
        """The bus message in a received frame, or None (an ack, an announcement, a
        position taken already, a frame that does not decode)."""
        head = sessionframe.MESSAGE_HEAD
        position = sessionframe.message_position(data)
        if not position:
            position = sessionframe.acked_message(data)[0]
            head = sessionframe.ACKED_HEAD
            self.acks_received += position > 0
        if position:
            # A message at a position, as every message in steady state: no tuple.
            if not end.receiver.take(position, now):
                self.duplicates += 1
                return None
            return data[head:]
        try:
            frame = sessionframe.decode(data)
        except DecodeError:
            self.malformed += 1
            return None
        if frame.kind is _ACK:
            self.acks_received += 1
            return None
        self.unnumbered += 1
        if b"Registry" in frame.payload:
            self.phase.c.registry += 1
        else:
            self.phase.c.unexpected += 1
        return None

    async def _ack(self, end: SessionEnd) -> None:
        receiver = end.receiver
        position = receiver.received
        await end.ws.send(sessionframe.ack(position))
        receiver.acknowledged(position)
        self.acks_sent += 1

    async def _sweep(self) -> None:
        """Acknowledge what has waited ``ACK_DELAY``: one pass over the sockets per tick."""
        while True:
            await asyncio.sleep(SWEEP_S)
            for end in list(self.ends.values()):
                if end.receiver.ack_due(time.monotonic()):
                    try:
                        await self._ack(end)
                    except ConnectionClosed:
                        continue

    # ---- readers ----------------------------------------------------------

    async def _a_reader(self, pair: Pair) -> None:
        ws = pair.a
        assert ws is not None
        end = self.ends[ws]
        try:
            async for data in ws:
                now = time.monotonic()
                payload = self._payload(end, data, now)  # type: ignore[arg-type]
                if payload is None:
                    continue
                if self._take_reply(pair, payload, now_ns()):
                    await self._send(pair, self.phase)
                # A coroutine only when one is due: this runs for every message.
                if end.receiver.ack_due(now):
                    await self._ack(end)
        except ConnectionClosed:
            self.phase.c.closed += 1

    async def _b_reader(self, pair: Pair) -> None:
        ws = pair.b
        assert ws is not None
        end = self.ends[ws]
        try:
            async for data in ws:
                now = time.monotonic()
                payload = self._payload(end, data, now)  # type: ignore[arg-type]
                if payload is None:
                    continue
                echo = self._take_request(pair, payload)
                if echo is not None:
                    await self._out(end, echo)
                if end.receiver.ack_due(now):
                    await self._ack(end)
        except ConnectionClosed:
            self.phase.c.closed += 1

    async def run(self) -> dict[str, Any]:
        results = await super().run()
        results["session"] = {
            "sockets": len(self.ends),
            "resume": self.resume,
            "acks_sent": self.acks_sent,
            "acks_inline": self.acks_inline,
            "acks_received": self.acks_received,
            "unnumbered": self.unnumbered,
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "sent": sum(e.sent for e in self.ends.values()),
            "taken": sum(e.receiver.received for e in self.ends.values()),
        }
        return results
