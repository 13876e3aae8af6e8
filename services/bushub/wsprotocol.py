"""uvicorn's WebSocket protocol, with a direct data path for agent sockets.

The handshake, denials, pings and the closing handshake stay uvicorn's
(``websockets-sansio``). Once an agent socket is attached, data frames skip the
ASGI channel in both directions:

- inbound, each complete message is handed to a callback from ``data_received``:
  no receive queue, no task woken per frame, and no pause/resume of reading per
  message (uvicorn pauses the transport after every frame until the app reads it,
  two epoll changes per message);
- outbound, a frame is written to the transport at once while the transport is
  under its high-water mark; above it, frames wait in the connection's bounded
  queue and are written from ``resume_writing`` (no writer task either);
- once set up, the socket is *handed over*: the ASGI task ends without closing
  the transport, and the socket lives on as callbacks until its end spawns one
  task for the closing handshake and clean-up.

That removes two task hand-offs per relayed message on each node, and the tasks
and coroutine frames an idle socket would otherwise keep for hours.

The close frame skips uvicorn's flow-control wait: a client that stopped reading
keeps the transport paused forever, so the hub could never tell it 4008 (slow
consumer). The frame is queued behind the backlog the client will read first; a
client that never reads it is cut off after uvicorn's close timeout.
"""

import asyncio
import enum
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.protocol import State

from bushub.closecodes import CloseCode
from bushub.handshake import BAD_UPGRADE, HandshakeGuard
from bushub.lightsync import Flag, Inbox

log = logging.getLogger(__name__)

# The ASGI scope extension under which an agent socket finds its direct path.
DIRECT_EXTENSION = "bushub.direct"

FrameCallback = Callable[[bytes], None]


class ExtraFrame(enum.Enum):
    """A frame that is not a whole message, by kind (``attach``'s ``on_extra``)."""

    CONTROL = "control"  # a ping or a pong
    FRAGMENT = "fragment"  # a continuation frame


ExtraFrameCallback = Callable[[ExtraFrame], None]
# A message's fragments are joined into one whenever this many are held.
JOIN_FRAGMENTS = 256
# The code of the websocket.disconnect, and the close the hub's WebSocket layer sent
# on its own before it (None when the client closed or vanished).
DisconnectCallback = Callable[[int, CloseCode | None], None]

# How long a socket's reading may stay held before the hub checks, once a second,
# whether its client hung up: the FIN (or reset) waits behind the unread frames, which
# a flood past the rate can make minutes' worth. Within this, a client that wrote a
# burst and closed still has it all relayed.
HELD_HANG_UP_AFTER = 2.0
_TCP_CLOSE = 7  # tcpi_state: reset
_TCP_CLOSE_WAIT = 8  # tcpi_state: the peer's FIN received

# Bytes of one read handed to the WebSocket parser per turn of the event loop. A read
# (up to 256 KiB) of tiny frames is tens of thousands of frames, each parsed and
# routed (or dropped over the rate) in one callback while every other socket waited:
# one socket's burst of 8-byte frames held a node for seconds, long enough for the
# other nodes to take it for dead. Sliced, the rest waits its turn, reading paused.
FEED_SLICE = 16 * 1024

_BINARY_FIN = 0x82
_HEADERS_7BIT = [bytes((_BINARY_FIN, n)) for n in range(126)]
_HEADER_16BIT = struct.Struct("!BBH")
_HEADER_64BIT = struct.Struct("!BBQ")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def frame_header(length: int) -> bytes:
    """The header of an unmasked, final binary frame (servers never mask)."""
    if length < 126:
        return _HEADERS_7BIT[length]
    if length < 1 << 16:
        return _HEADER_16BIT.pack(_BINARY_FIN, 126, length)
    return _HEADER_64BIT.pack(_BINARY_FIN, 127, length)


def on_client_socket(
    transport: asyncio.BaseTransport, check: Callable[[socket.socket], bool]
) -> bool:
    """``check`` on a view of the transport's socket, let go after (the transport keeps
    the descriptor): False without a socket, True when the descriptor is gone with the
    connection."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        probe = socket.socket(fileno=sock.fileno())
    except (OSError, ValueError):  # closed already: its descriptor is -1
        return True
    try:
        return check(probe)
    finally:
        probe.detach()


def _tcp_closed(sock: socket.socket) -> bool:
    """Whether the peer closed (its FIN received) or reset the connection, whatever
    unread data comes before that."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return False  # not TCP: no verdict
    return state in (_TCP_CLOSE_WAIT, _TCP_CLOSE)


class HeldText(bytes):
    """A text frame held back with the binary frames read in the same chunk (on a
    socket that takes binary frames only, for ``on_text`` in its turn)."""


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    """``websockets-sansio`` with a direct data path and a close that never waits."""

    # Counts and logs an upgrade the WebSocket layer refused (set per node: ``guarded_ws``).
    guard: ClassVar[HandshakeGuard | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lighter than uvicorn's asyncio.Queue and asyncio.Event (see lightsync);
        # every way a connection ends (close frame, lost transport, protocol error,
        # server shutdown) passes through the inbox as a websocket.disconnect.
        self._inbox: Inbox[ASGIReceiveEvent] = Inbox(self._on_inbox_put)
        self.queue = self._inbox  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()
        self._on_frame: FrameCallback | None = None
        # Where text frames go instead, when the socket takes binary frames only.
        self._on_text: FrameCallback | None = None
        # Told of each frame that is not a whole message (see ``attach``).
        self._on_extra: ExtraFrameCallback | None = None
        self._on_disconnect: DisconnectCallback | None = None
        self._on_writable: Callable[[], None] | None = None
        # The task waiting for the publisher to have room, while reading is held.
        self._reading_held: asyncio.Task[None] | None = None
        # Messages read but not routed while reading is held, oldest first.
        self._held_frames: list[bytes] | None = None
        # Since when reading has been held, counting holds less than a second apart
        # as one (a flood paid for in turns), and when the hub last looked for a
        # hang-up meanwhile; when the last hold ended (loop time; 0 while held).
        self._held_since = 0.0
        self._hang_up_checked = 0.0
        self._released_at = 0.0
        # Set once the client is found to have hung up while held: it stays so.
        self._hung_up = False
        # Set while ``detach`` routes what was held: nothing is held again.
        self._detaching = False
        self._handed_over = False
        self._abort_timer: asyncio.TimerHandle | None = None
        # The close this layer sent on its own (a protocol error, a text frame that
        # is not UTF-8, a frame over the limit, a failure routing a frame): the
        # socket ended by the hub's doing, not the client's.
        self.sent_close: CloseCode | None = None
        # Keepalive (bushub.keepalive): anything received since the last check, and
        # whether the hub pinged at that check.
        self.heard = True
        self._pinged = False
        # What was read and not yet handed to the parser (``FEED_SLICE``), oldest
        # first; None when nothing waits.
        self._unfed: deque[memoryview] | None = None

    def data_received(self, data: bytes) -> None:
        if self._unfed is not None:  # read while the parser works through a backlog
            self._unfed.append(memoryview(data))
            self.transport.pause_reading()  # resumed by ``_feed`` once it is through
            return
        if len(data) <= FEED_SLICE:
            super().data_received(data)
            return
        self._unfed = deque((memoryview(data)[FEED_SLICE:],))
        self.transport.pause_reading()
        super().data_received(data[:FEED_SLICE])
        self.loop.call_soon(self._feed)

    def _feed(self) -> None:
        """Hand the parser the next slice of what was read, in a turn of its own."""
        unfed = self._unfed
        if unfed is None:
            return
        if self.disconnected or self.conn.parser_exc is not None or self.transport.is_closing():
            self._unfed = None  # ended: nothing more is read
            return
        if self._reading_held is not None:
            # Held (backpressure, a spent budget): the rest of the read waits too, or
            # a read's thousands of pings were answered at once whatever the budget.
            # ``_release_reading`` feeds on.
            return
        head = unfed[0]
        if len(head) > FEED_SLICE:
            unfed[0] = head[FEED_SLICE:]
            head = head[:FEED_SLICE]
        else:
            unfed.popleft()
        super().data_received(bytes(head))
        if unfed:
            self.loop.call_soon(self._feed)
            return
        self._unfed = None
        self._read_on()

    def _read_on(self) -> None:
        """Resume reading unless something else holds it: the end, uvicorn's own pause
        (messages waiting for the ASGI app), backpressure (``hold_reading``), or a
        backlog the parser is working through (``_feed``)."""
        if not (
            self.disconnected
            or self.read_paused
            or self._reading_held is not None
            or self._unfed is not None
        ):
            self.transport.resume_reading()

    def handle_ping(self) -> None:
        pong = self.conn.data_to_send()
        # A client that reads nothing (the transport over its high-water mark) would
        # read the pong after everything queued before it: it goes unanswered, as
        # RFC 6455 allows of any ping but the latest. Written regardless, a flood of
        # pings from a client that never reads grew the node's memory without bound.
        if self.writable.is_set():
            self.transport.write(b"".join(pong))
        on_extra = self._on_extra
        if on_extra is not None:
            on_extra(ExtraFrame.CONTROL)

    def handle_pong(self, event: Frame) -> None:
        super().handle_pong(event)
        on_extra = self._on_extra
        if on_extra is not None:
            on_extra(ExtraFrame.CONTROL)

    def handle_cont(self, event: Frame) -> None:
        # uvicorn keeps a message's fragments in a list until the last: one object
        # each, empty ones too, which the message's size bound does not see (a
        # million two-byte fragments held 57 MB a socket). Joined now and then, the
        # list stays short.
        if len(self.frames) >= JOIN_FRAGMENTS:
            self.frames = [b"".join(self.frames)]
        super().handle_cont(event)
        on_extra = self._on_extra
        if on_extra is not None:
            on_extra(ExtraFrame.FRAGMENT)

    def handle_events(self) -> None:
        # Heard from: a whole frame came, data or control. Bytes alone are not: a
        # client that trickled one frame a byte at a time held its partial frame (up
        # to twice --max-message-bytes) for as long as it liked.
        if self.conn.events:
            self.heard = True
        super().handle_events()

    def keepalive_check(self) -> bool:
        if self.heard or self._reading_held is not None or self.read_paused:
            # Not reading (backpressure): the client's pings wait unread; no verdict.
            self.heard = False
            self._pinged = False
            return True
        if self._pinged:
            return False
        # Only a client that sends no keepalive of its own costs a ping.
        if not (self.close_sent or self.disconnected) and self.conn.state is State.OPEN:
            self._pinged = True
            self.conn.send_ping(b"")
            self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def handle_handshake_exception(self) -> None:
        super().handle_handshake_exception()  # a request it could not parse: 400
        self._bad_upgrade()

    def _bad_upgrade(self) -> None:
        if self.guard is not None:
            why = self.conn.handshake_exc
            self.guard.refuse(BAD_UPGRADE, self.client, str(why) if why else "refused")

    def handle_connect(self, event: Any) -> None:
        if event.headers.get_all("Sec-WebSocket-Version") != ["13"]:
            # RFC 6455 4.4: a version the server does not speak is answered with the
            # one it does, which websockets' refusal leaves out.
            reject = self.conn.reject

            def naming_the_version(status: Any, text: str) -> Any:
                response = reject(status, text)
                response.headers["Sec-WebSocket-Version"] = "13"
                return response

            self.conn.reject = naming_the_version  # type: ignore[method-assign]
        super().handle_connect(event)
        # The request is in the scope now; only the response is still needed. The
        # sansio parser's frame keeps the request object for the socket's life, so
        # its headers are emptied, not just let go.
        event.headers.clear()
        del self.request
        if self.response.status_code != 101:  # refused by websockets (400)
            self._bad_upgrade()
        elif not self.close_sent:  # an upgrade: uvicorn built the scope
            self.scope["extensions"][DIRECT_EXTENSION] = {"protocol": self}

    # ---- the direct path ------------------------------------------------------

    def attach(
        self,
        on_frame: FrameCallback,
        on_disconnect: DisconnectCallback,
        on_writable: Callable[[], None],
        on_text: FrameCallback | None = None,
        on_extra: ExtraFrameCallback | None = None,
    ) -> None:
        """Hand every later message to ``on_frame``, the end to ``on_disconnect``,
        and each resumption of writing (flow control) to ``on_writable``; with
        ``on_text`` (a socket that takes binary frames only), text frames go there;
        ``on_extra`` is told of each frame that is not a whole message: a ping
        (once answered) or pong, a fragment after a message's first.

        Messages that arrived before (queued for the ASGI app, reading paused) are
        handed over first, in order.
        """
        early: list[ASGIReceiveEvent] = []
        while not self.queue.empty():
            early.append(self.queue.get_nowait())
        self._on_frame = on_frame
        self._on_disconnect = on_disconnect
        self._on_writable = on_writable
        self._on_text = on_text
        self._on_extra = on_extra
        for message in early:
            if message["type"] == "websocket.receive":
                data = message.get("bytes")
                if data is not None:
                    self._deliver(data)
                elif on_text is not None:
                    on_text((message.get("text") or "").encode())
                else:
                    self._deliver((message.get("text") or "").encode())
            else:
                self.queue.put_nowait(message)
        if self.read_paused:
            self.read_paused = False
            self._read_on()

    def detach(self) -> None:
        """Back to uvicorn's ASGI channel (for the closing handshake). What reading
        held back is routed first (relayed, or dropped and counted: before, it went
        with the socket, counted nowhere), and reading goes on, for the client's close
        (a drain waited its whole timeout for a socket whose reading was held)."""
        holding, self._reading_held = self._reading_held, None
        if holding is not None:
            holding.remove_done_callback(self._release_reading)
            holding.cancel()
        held, self._held_frames = self._held_frames, None
        if held and self._on_frame is not None:
            self._detaching = True
            for data in held:
                self._route_held(data)
            self._detaching = False
        self._on_frame = None
        self._on_disconnect = None
        self._on_writable = None
        self._on_text = None
        self._on_extra = None
        # With no _on_disconnect, the inbox's callback (a bound method: a cycle
        # through self) has nothing left to do. Let go, the protocol dies by
        # reference count once its socket ends, not at a rare full collection.
        self._inbox.on_put = None
        self._go_on_reading()

    def _on_inbox_put(self, message: ASGIReceiveEvent) -> None:
        callback = self._on_disconnect
        if callback is not None and message["type"] == "websocket.disconnect":
            self._on_disconnect = None
            code = int(message.get("code", 1005))
            if code == 1005 and self.conn.close_rcvd is None:
                # uvicorn says 1005 (a close frame without a code) for a connection
                # lost with no close frame at all: that is 1006, as the client sees
                # it, and an operator tells a reset client from one that closed.
                code = 1006
            callback(code, self.sent_close)

    def hand_over(self) -> None:
        """Let the ASGI task end without closing the socket; see ``finish_with``."""
        self._handed_over = True
        # Admission has read them: ~1 KB a socket that nothing reads again.
        self.scope["headers"] = []

    def finish_with(self, ending: Coroutine[Any, Any, None]) -> None:
        """Run a handed-over socket's ending as a task uvicorn's shutdown waits for,
        then close the transport as the ASGI task's end would have."""
        task = self.loop.create_task(self._finish(ending))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish(self, ending: Coroutine[Any, Any, None]) -> None:
        try:
            await ending
        except Exception:
            self.logger.exception("Exception ending a WebSocket\n")
        if self.close_timer is None:
            self.transport.close()
        if self.disconnected:
            # Gone already (the client closed first): a timer would only keep this
            # protocol, and what it holds, alive for the close timeout.
            return
        # close() waits for the write buffer to drain, which a client that stopped
        # reading never lets happen: past the close timeout, cut it off.
        self._abort_timer = self.loop.call_later(self.close_timeout, self._abort_if_open)

    def _abort_if_open(self) -> None:
        self._abort_timer = None
        if not self.disconnected:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        unfed, self._unfed = self._unfed, None
        # What was read is routed (or counted), as it was when a read was parsed
        # whole: the connection's end comes after it.
        for chunk in unfed or ():
            if self.conn.parser_exc is not None:
                break
            super().data_received(bytes(chunk))
        super().connection_lost(exc)
        # The parser is a generator of websockets' protocol object that refers back
        # to it: a cycle, freed by reference count only once closed. Left suspended
        # (a connection lost mid-frame), it kept the partial frame (up to twice
        # --max-message-bytes) until a full collection, which the node makes rare.
        self.conn.parser.close()
        # Gone already: the timer would only keep this protocol (and what it holds)
        # alive for the close timeout.
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None

    async def run_asgi(self) -> None:
        # uvicorn's, except that a socket handed over keeps its transport open.
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        # The app has read the direct path's extension (the scope refers to self: a
        # cycle); a socket never attached has no use for the inbox's callback either
        # (another cycle). Broken here, the protocol dies by reference count.
        self.scope.get("extensions", {}).pop(DIRECT_EXTENSION, None)
        if not self._handed_over:
            self._inbox.on_put = None
        if self.close_timer is None and not self._handed_over:
            self.transport.close()

    def send_frame(self, payload: bytes) -> bool:
        """Write one binary frame now; False once the socket no longer takes data."""
        if self.close_sent or self.disconnected or self.conn.state is not State.OPEN:
            return False
        self.transport.write(frame_header(len(payload)) + payload)
        return True

    def takes_frames(self) -> bool:
        """False while the transport is over its high-water mark."""
        return self.writable.is_set()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._on_writable is not None:
            self._on_writable()

    def hold_reading(
        self, until: Callable[[], Coroutine[Any, Any, None]], again: bytes | None = None
    ) -> None:
        """Route nothing more from the client until ``until()`` returns (backpressure).

        Reading stops, and messages already read in the same chunk wait here: a
        chunk can hold hundreds of small frames, more than the room left.

        Args:
            again: A frame just routed that is to be routed again first (one the
                relay held back).
        """
        if self._detaching:
            return  # the socket is ending: what is routed now is not held again
        if again is not None:
            self._held_frames = [again, *(self._held_frames or ())]
        if self._reading_held is not None:
            return
        now = self.loop.time()
        if not self._held_since or (self._released_at and now - self._released_at > 1.0):
            self._held_since = self._hang_up_checked = now
        self._released_at = 0.0  # held (again): the spell goes on
        self.transport.pause_reading()
        # Held here: the loop keeps only a weak reference to a task.
        self._reading_held = self.loop.create_task(until())
        self._reading_held.add_done_callback(self._release_reading)

    def _release_reading(self, _: object) -> None:
        self._reading_held = None
        if self.client_hung_up():
            # What was held is routed as the socket ends (``detach``).
            log.info("closing a socket: its client hung up while its reading was held")
            self.transport.abort()
            return
        held, self._held_frames = self._held_frames, None
        for index, data in enumerate(held or ()):
            if self._on_frame is None:
                return  # the socket is ending: nothing is routed any more
            self._route_held(data)
            if self._reading_held is not None:  # held again: keep the rest, in order
                # Routing is synchronous: all ``_held_frames`` can hold now is a
                # frame given back to be routed again, which goes first.
                self._held_frames = [*(self._held_frames or ()), *(held or ())[index + 1 :]]
                return
        self._released_at = self.loop.time()
        self._go_on_reading()

    def _route_held(self, data: bytes) -> None:
        """Route a frame reading held back: a text frame where text frames go."""
        if type(data) is HeldText and self._on_text is not None:
            self._on_text(data)
        else:
            self._route(data)

    def _go_on_reading(self) -> None:
        """Feed on what is read already, else read on (``_read_on``)."""
        if self._unfed is not None:
            self.loop.call_soon(self._feed)
        else:
            self._read_on()

    def client_hung_up(self) -> bool:
        """Whether the client closed or reset its end while reading has been held
        past ``HELD_HANG_UP_AFTER`` (asked once a second at most; once found, so it
        stays). A hold waits on this as well as on its own end: a long one (a
        budget paying off a flood) kept a client gone for minutes."""
        if self._hung_up:
            return True
        now = self.loop.time()
        if now - self._held_since < HELD_HANG_UP_AFTER or now - self._hang_up_checked < 1.0:
            return False
        self._hang_up_checked = now
        self._hung_up = on_client_socket(self.transport, _tcp_closed)
        return self._hung_up

    def send_receive_event_to_app(self) -> None:
        if self.close_sent:
            super().send_receive_event_to_app()  # discards it
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.curr_msg_data_type == "text" and not _is_utf8(data):
            # The client's fault, not the hub's: one line, no traceback (uvicorn's
            # own check logs an ERROR with one).
            log.info("closing a socket: a text frame is not UTF-8")
            self.fail(CloseCode.INVALID_DATA)
            return
        if self._on_frame is None:
            self.frames = [data]
            super().send_receive_event_to_app()
            return
        if self._on_text is not None and self.curr_msg_data_type == "text":
            if self._reading_held is not None:
                # Read in the same chunk as frames held back: it waits its turn too.
                self._deliver(HeldText(data))
                return
            self._on_text(data)
            return
        self._deliver(data)

    def fail(self, code: CloseCode) -> None:
        """Fail the connection (RFC 6455 7.1.7) with ``code``, as the hub's own doing."""
        self.conn.send_close(code)
        self.handle_parser_exception()

    def handle_parser_exception(self) -> None:
        # Every close this layer makes on its own passes here: websockets' (protocol
        # error, too big) and the hub's (``fail``).
        sent = self.conn.close_sent
        if sent is not None and self.sent_close is None:
            try:
                self.sent_close = CloseCode(sent.code)
            except ValueError:  # a code the hub does not list: still the hub's close
                self.sent_close = CloseCode.PROTOCOL_ERROR
        super().handle_parser_exception()

    def _deliver(self, data: bytes) -> None:
        if self._reading_held is not None:
            if self._held_frames is None:
                self._held_frames = []
            self._held_frames.append(data)
            return
        self._route(data)

    def _route(self, data: bytes) -> None:
        on_frame = self._on_frame
        assert on_frame is not None
        try:
            on_frame(data)
        except Exception:
            # A bug in routing must end this socket loudly, not the event loop's
            # callback (uvloop would only log it) and not the other sockets.
            log.exception("routing a frame failed; closing the socket")
            self.fail(CloseCode.INTERNAL_ERROR)

    # ---- closing --------------------------------------------------------------

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.close" and self.handshake_complete:
            # Nothing is sent after a close, so leaving the gate open is harmless.
            self.writable.set()
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            del self.response  # its headers are on the wire; it is not read again


def guarded_ws(guard: HandshakeGuard) -> type[HubWebSocketProtocol]:
    """The protocol class uvicorn serves WebSockets with (``ws=``) under ``guard``."""

    class Guarded(HubWebSocketProtocol):
        pass

    Guarded.guard = guard
    return Guarded
