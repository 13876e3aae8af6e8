"""Frames to agent sockets: the one owner of what the hub writes to a client.

A frame reaches a socket one of three ways: written to its transport at once (the
direct path, while the transport is under its high-water mark), queued and written
by ``flush`` when the transport resumes writing, or queued for the writer task (other
ASGI servers). Every way ends in ``sent``, which counts it. A frame that does not fit
the socket's bounded queue closes the socket as a slow consumer (4008) rather than
starving it silently; a frame for a socket that is closing is counted lost.
"""

import time
from collections.abc import Callable

from bushub.closecodes import CloseCode
from bushub.connection import Connection, Enqueued
from bushub.metrics import Metrics
from buswire import DropReason
from buswire.sessionframe import Kind, unnumbered

# The first byte of an acknowledgement written to a session socket.
_ACK_FRAME = bytes([Kind.ACK])


class Outbound:
    """Queueing, writing and accounting of frames to clients.

    Args:
        metrics: Where writes and losses are counted.
        clock: Wall-clock seconds, for the relay latency of relayed frames.
    """

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._clock = clock

    def enqueue(self, conn: Connection, payload: bytes, received_at: float) -> None:
        """Send one frame to ``conn``, now or in turn.

        Args:
            payload: The bytes to send, already in the connection's format.
            received_at: When the first hub received it; 0 for the hub's own frames.
        """
        result = conn.enqueue(payload, received_at)
        if result is Enqueued.SENT:
            self.sent(conn, payload, received_at)
        elif result is Enqueued.FULL:
            conn.dropped += 1
            self._metrics.messages_dropped.labels(DropReason.SLOW_CONSUMER).inc()
            conn.request_close(CloseCode.SLOW_CONSUMER)
        elif result is Enqueued.CLOSING:
            conn.dropped += 1
            self._metrics.messages_dropped.labels(DropReason.CLOSING).inc()

    def announce(self, conn: Connection, payload: bytes) -> None:
        """Send a message the hub made itself (no position on a session socket)."""
        if conn.session is not None:
            payload = unnumbered(payload)
        self.enqueue(conn, payload, 0.0)

    def flush(self, conn: Connection) -> None:
        """Write a direct socket's queued frames while its transport takes them."""
        outlet = conn.outlet
        if outlet is None:
            return
        while outlet.takes_frames():
            item = conn.pop()
            if item is None:
                conn.drained()  # a drain waits for this queue to empty
                return
            if not outlet.send_frame(item[0]):
                conn.dropped += 1
                self._metrics.messages_dropped.labels(DropReason.CLOSING).inc()
                return
            self.sent(conn, item[0], item[1])

    def sent(self, conn: Connection, payload: bytes, received_at: float) -> None:
        """Account for one frame written to a client: a message, but for the
        acknowledgements a session socket is written (as the acknowledgements its
        proxy sends are no message received either)."""
        traffic = self._metrics.traffic
        traffic.bytes_sent += len(payload)
        if not received_at and conn.session is not None and payload[:1] == _ACK_FRAME:
            return
        conn.messages_out += 1
        traffic.delivered[conn.format.value] += 1
        if received_at:
            traffic.observe_latency(max(0.0, self._clock() - received_at))

    def lost(self, conn: Connection) -> None:
        """Count what an ended socket will never write."""
        unsent = conn.unsent()
        if unsent:
            conn.dropped += unsent
            self._metrics.messages_dropped.labels(DropReason.CLOSING).inc(unsent)
