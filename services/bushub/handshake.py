"""Bounds on a connection before it is a request: time and header bytes.

uvicorn's httptools protocol waits as long as a client likes for the rest of a
request and buffers header lines without limit (``timeout_keep_alive`` only runs
between requests; ``h11_max_incomplete_event_size`` is h11's). Thousands of
half-sent requests then hold descriptors until the node reaches its limit, and a
flood of header lines grows memory by its size. This protocol adds both bounds:

- a deadline from accept (or the first byte of a later request on a kept-alive
  connection) to a complete request or WebSocket upgrade; past it the connection
  is closed, with 408 when nothing has been answered yet;
- at most ``max_header_bytes`` read before the headers are complete; past it the
  connection gets 431 and is closed, before the bytes reach the parser. (A request
  pipelined behind a body, in the same read, can bring one read's worth more.)
  Within it, an upgrade the WebSocket layer cannot read (a missing or bad
  ``Sec-WebSocket-Key``, an unknown version) gets its 400 as before, now counted
  (``bad_upgrade``) and logged.

Refusals are counted in ``bushub_connections_refused_total`` and logged as
warnings, which ``bushub.logs`` prints at most once per 10 s with a count of the
suppressed ones: an attack makes one line, not one per connection.
"""

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets import http11

from bushub.fdlimit import FdWatch
from bushub.metrics import Metrics

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = "handshake_timeout"
HEADERS_TOO_LARGE = "headers_too_large"
BAD_UPGRADE = "bad_upgrade"
# A request the HTTP parser cannot read (a control character in a header, a NUL in the
# path, both Content-Length and Transfer-Encoding): uvicorn answers 400 and logs it.
BAD_REQUEST = "bad_request"

_LOG_TEMPLATES = {
    HANDSHAKE_TIMEOUT: "no complete request within %.1fs: closed the connection from %s",
    HEADERS_TOO_LARGE: "request headers over %d bytes: refused the connection from %s with 431",
    BAD_UPGRADE: "not a WebSocket upgrade (%s): refused the connection from %s with 400",
}


def parse_up_to(max_header_bytes: int) -> None:
    """Let the WebSocket layer parse any upgrade of up to ``max_header_bytes`` bytes.

    websockets reads an upgrade again with limits of its own: 8,192 bytes a line and
    128 header lines, past which a request under ``--max-header-bytes`` (a long
    token in the query or in ``Authorization``) was answered a bare 400. What it
    reads has passed ``HandshakeGuard``'s byte bound already, so no line can be
    longer than that, nor can there be more lines than a quarter of it ("X:" CRLF).
    """
    http11.MAX_LINE_LENGTH = max(http11.MAX_LINE_LENGTH, max_header_bytes)
    http11.MAX_NUM_HEADERS = max(http11.MAX_NUM_HEADERS, max_header_bytes // 4)


def _plain_response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


_TIMED_OUT = _plain_response(b"408 Request Timeout", b"request timeout")
_TOO_LARGE = _plain_response(b"431 Request Header Fields Too Large", b"headers too large")
_UPGRADE_NEEDS_11 = _plain_response(b"400 Bad Request", b"a WebSocket upgrade needs HTTP/1.1")
_ONE_HOST = _plain_response(b"400 Bad Request", b"a request needs exactly one Host header")


class HandshakeGuard:
    """The bounds, and what a refusal does: count, log, watch descriptors."""

    def __init__(self, timeout: float, max_header_bytes: int, metrics: Metrics) -> None:
        self.timeout = timeout
        self.max_header_bytes = max_header_bytes
        self.fds = FdWatch(metrics)
        self._refused = metrics.connections_refused

    def count(self, reason: str) -> None:
        """Count one connection refused that something else logged."""
        self._refused.labels(reason).inc()

    def refuse(self, reason: str, client: tuple[str, int] | None, why: str = "") -> None:
        """Count and log one connection refused before it became a request (``why``:
        what was wrong with an upgrade)."""
        self._refused.labels(reason).inc()
        limit: object = self.timeout if reason == HANDSHAKE_TIMEOUT else self.max_header_bytes
        if reason == BAD_UPGRADE:
            limit = why
        peer = f"{client[0]}:{client[1]}" if client else "?"
        log.warning(_LOG_TEMPLATES[reason], limit, peer)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a ``HandshakeGuard``; see ``guarded``."""

    guard: ClassVar[HandshakeGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        # Reading a request's start line and headers (not its body, not idle
        # between requests), and the bytes read so far while doing so.
        self._reading_headers = True
        self._header_bytes = 0

    # ---- the deadline ---------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.guard.fds.accepted(sock.fileno())

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A later request on a kept-alive connection gets its own deadline; the
        # idle time before it is uvicorn's keep-alive timeout.
        self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._reading_headers = True

    def handle_websocket_upgrade(self) -> None:
        # The request is complete: the socket is the WebSocket protocol's now.
        self._disarm()
        version = self.scope.get("http_version", "1.1")
        hosts = sum(1 for name, _ in self.headers if name == b"host")
        if version != "1.1" or hosts != 1:
            # RFC 6455 asks HTTP/1.1 of an upgrade (uvicorn handed the WebSocket
            # layer an HTTP/0.9 or HTTP/2.0 request line rewritten as 1.1), and HTTP/1.1
            # exactly one Host (RFC 9112 3.2).
            self._refuse(_UPGRADE_NEEDS_11 if version != "1.1" else _ONE_HOST)
            why = f"HTTP/{version}" if version != "1.1" else f"{hosts} Host headers"
            self.guard.refuse(BAD_UPGRADE, self.client, why)
            self.parser = None  # type: ignore[assignment]
            return
        super().handle_websocket_upgrade()
        # httptools' parser holds bound methods of this protocol (its callbacks), and
        # this protocol holds the parser: a cycle uvicorn breaks in connection_lost,
        # which an upgraded protocol never gets (the transport is the WebSocket
        # protocol's now). Broken here, the protocol, its parser and the request's
        # headers die by reference count with the upgrade, not at the next full
        # collection: ~24 objects a socket, which the node's raised thresholds
        # (bushub.gcpolicy) otherwise kept for minutes. Nothing parses again: the
        # parser raised on the upgrade and data_received returns after this.
        self.parser = None  # type: ignore[assignment]

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.guard.timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to what its parser refused, which it logs (rate-limited)
        # itself: counted here, as every refusal is.
        self.guard.count(BAD_REQUEST)
        super().send_400_response(msg)

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self._refuse(_TIMED_OUT)
        self.guard.refuse(HANDSHAKE_TIMEOUT, self.client)

    # ---- the header bytes -----------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._reading_headers:
            super().data_received(data)
            return
        room = self.guard.max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            super().data_received(data)
            return
        # Only what fits reaches the parser; the rest waits for the headers' end.
        self._header_bytes += room
        if room:
            super().data_received(data[:room])
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # refused by the parser, or upgraded (uvicorn drops the rest)
        if self._reading_headers:
            self._refuse(_TOO_LARGE)
            self.guard.refuse(HEADERS_TOO_LARGE, self.client)
            return
        self.data_received(data[room:])

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        super().on_headers_complete()

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` unless the application is writing its own, and close
        (a body that stopped coming, the request read and waiting for it, gets the
        408 too; ``cycle`` is the previous request's until a new one's headers are
        read, complete then)."""
        self._disarm()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(response)
        self.transport.close()


def guarded(guard: HandshakeGuard) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn serves HTTP with (``http=``) under ``guard``."""

    class Guarded(GuardedHttpProtocol):
        pass

    Guarded.guard = guard
    return Guarded
