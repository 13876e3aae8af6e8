"""``GET /ws/{agent}``: one agent socket, from handshake to close.

Served by the hub's own uvicorn protocol (``bushub serve``), a socket takes the
direct path: frames are routed from the protocol's ``data_received`` and written
straight to its transport, and once set up the socket needs no task until it ends
(see ``bushub.wsprotocol`` for why). Under any other ASGI server it is served by
``bushub.fallback``: a reader and a writer task. Either way cleanup runs in
``finally``, and a client going away is a normal ending, not an error.
"""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from bushub.auth import AuthError, Grant, TokenVerifier, bearer_value
from bushub.broker.refusals import BrokerRefused
from bushub.closecodes import CloseCode, close_reason
from bushub.connection import ClientGone, Connection, ConnectionParams, new_connection_id
from bushub.fallback import serve_fallback
from bushub.hub import Hub
from bushub.limits import EXTRA_FRAMES_PER_MESSAGE, LEAST_WAIT, TokenBucket
from bushub.origins import OriginPolicy
from bushub.sessions import Session, SessionParamError, session_params
from bushub.wsprotocol import (
    DIRECT_EXTENSION,
    ExtraFrame,
    HubWebSocketProtocol,
    on_client_socket,
)
from buswire import DecodeError, Dialect, Format, sessionframe, validate_agent_name

log = logging.getLogger(__name__)

# An accepted socket's raw ASGI send and receive.
AsgiChannel = tuple[Callable[[Any], Awaitable[None]], Callable[[], Awaitable[Any]]]

_DIALECTS = {"auto": None, "subagents": Dialect.SUBAGENTS, "pipecat": Dialect.PIPECAT}
_PEER_LOST = {"close": True, "keep": False}


class BadParameters(ValueError):
    """The connection URL asks for something the hub does not offer."""


# The path of an agent socket, before its one segment: the agent's name.
_SOCKET_PATH = b"/ws/"


def query_of(raw_query: bytes) -> dict[str, str]:
    """A handshake's query parameters (the last of a repeated one), decoded strictly:
    the server's own turns bytes that are not UTF-8 into U+FFFD, so ``peer=%FF`` named
    an agent "\ufffd" that ``/ws/%FF`` cannot be.

    Raises:
        BadParameters: a parameter that is not UTF-8.
    """
    try:
        pairs = parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadParameters("a query parameter is not UTF-8") from None
    return dict(pairs)


def agent_in_path(raw_path: bytes, prefix: bytes = _SOCKET_PATH) -> str:
    """The agent a socket's path names: the one segment after ``/ws/`` (or
    ``prefix``: a tap's ``/api/tap/``), decoded.

    Decoded here from the raw path, strictly: the server's decoded path turns every
    byte that is not UTF-8 into U+FFFD, so ``/ws/%FF`` and ``/ws/%FE`` would name
    the same agent and take each other over.

    Raises:
        BadParameters: no name, more than one segment (a slash, encoded or not),
            a dot segment, or bytes that are not UTF-8.
    """
    if not raw_path.startswith(prefix):
        raise BadParameters(f"not {prefix.decode()}{{agent}}")
    segment = raw_path[len(prefix) :]
    decoded = unquote_to_bytes(segment)
    if not segment or b"/" in decoded:
        raise BadParameters(f"the path must be {prefix.decode()} and one segment")
    try:
        agent = decoded.decode()
    except UnicodeDecodeError:
        raise BadParameters("the agent name is not UTF-8") from None
    if agent in (".", ".."):
        # Clients and proxies resolve dot segments: such a name is never reached.
        raise BadParameters("the agent name is a dot segment")
    return agent


def parse_params(agent: str, query: dict[str, str]) -> ConnectionParams:
    """Read the connection contract (docs/protocol.md) from the path and query.

    Raises:
        BadParameters: naming the offending parameter.
    """
    try:
        validate_agent_name(agent)
        peer = query.get("peer") or None
        if peer is not None:
            validate_agent_name(peer)
    except DecodeError as exc:
        raise BadParameters(f"agent name: {exc.detail}") from None
    raw_format = query.get("format")
    try:
        # An empty format= is no format: refused, as an empty dialect= is (it was
        # read as a declared json, closing the socket at a first MsgPack frame).
        fmt = Format(raw_format if raw_format is not None else "json")
    except ValueError:
        raise BadParameters("format must be json or msgpack") from None
    dialect_name = query.get("dialect", "auto")
    if dialect_name not in _DIALECTS:
        raise BadParameters("dialect must be subagents, pipecat or auto")
    on_peer_lost = query.get("on_peer_lost", "close")
    if on_peer_lost not in _PEER_LOST:
        raise BadParameters("on_peer_lost must be close or keep")
    return ConnectionParams(
        agent=agent,
        peer=peer,
        format=fmt,
        format_declared=raw_format is not None,
        dialect=_DIALECTS[dialect_name],
        close_on_peer_lost=_PEER_LOST[on_peer_lost],
    )


def _serve_direct(
    protocol: HubWebSocketProtocol,
    conn: Connection,
    hub: Hub,
    ending: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """Route frames from the protocol's callbacks; run ``ending()`` once it is to end.

    The socket's task returns after this: nothing waits on an idle socket.
    """
    publisher = hub.publisher
    route = hub.relay.route
    flush = hub.outbound.flush

    def on_frame(data: bytes) -> None:
        wait = route(conn, data)
        if wait:
            # A session's message over the socket's rate: it goes again first once
            # the budget has refilled, and nothing more is read meanwhile.
            protocol.hold_reading(lambda: asyncio.sleep(wait), again=data)
        elif publisher.crowded:
            protocol.hold_reading(publisher.room)

    def on_closing() -> None:
        protocol.detach()
        protocol.finish_with(ending())

    def on_text(data: bytes) -> None:
        # Frames on a session socket are binary (docs/protocol.md, Sessions).
        wait = hub.relay.refuse_text(conn, data)
        if wait:
            protocol.hold_reading(lambda: asyncio.sleep(wait))

    frames_throttled = hub.metrics.frames_throttled
    extra, size_bytes = conn.frame_rate, conn.byte_rate

    async def budget_allows() -> None:
        # What ends the wait is time, not an event; looked at each second, as is
        # whether the client hung up meanwhile (a long debt held a gone client).
        while wait := max(extra.seconds_until_one(), size_bytes.seconds_until_one()):
            await asyncio.sleep(min(max(wait, LEAST_WAIT), 1.0))
            if protocol.client_hung_up():
                return

    def throttle() -> None:
        protocol.hold_reading(budget_allows)

    conn.throttle = throttle

    def on_extra(kind: ExtraFrame) -> None:
        # Each costs the node a parse (a ping a pong too) and takes from the socket's
        # budget of frames that are not messages; past it, reading waits.
        if extra.spend():
            frames_throttled.labels(kind.value).inc()
            throttle()

    protocol.attach(
        on_frame,
        conn.socket_ended,
        lambda: flush(conn),
        on_text if conn.session else None,
        on_extra,
    )
    protocol.hand_over()
    flush(conn)  # what was sent to the socket between its claim and its accept
    conn.closing.on_set(on_closing)


def _hung_up_probe(protocol: HubWebSocketProtocol) -> Callable[[], bool]:
    """Whether the client has closed its end: the transport knows already, or the
    socket has its FIN (or a reset) waiting unread. Asked at the claim, which can
    come before the loop has read what arrived with the request."""
    transport = protocol.transport

    def hung_up() -> bool:
        return transport.is_closing() or on_client_socket(transport, _end_waiting)

    return hung_up


def _end_waiting(sock: socket.socket) -> bool:
    """Whether the next thing to read is the client's FIN, or the connection was reset."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def _direct_protocol(websocket: WebSocket) -> HubWebSocketProtocol | None:
    extension = websocket.scope.get("extensions", {}).get(DIRECT_EXTENSION)
    protocol = extension.get("protocol") if extension else None
    return protocol if isinstance(protocol, HubWebSocketProtocol) else None


async def _close_and_wait(channel: AsgiChannel, code: CloseCode, timeout: float) -> None:
    """Close with ``code`` and wait, bounded, until the TCP connection is gone.

    Sending the close frame is not enough before a takeover: the stock proxy, when
    activated twice, must see its older socket end before the newer handshake
    completes, or the old receive loop drops the new socket. uvicorn reports the
    transport's end as a second ``websocket.disconnect`` (1005/1006), after the one
    it queues when the close frame goes out; the raw ASGI receive sees both.
    """
    send, receive = channel  # the raw ASGI channel: starlette's stops at the first
    close = {"type": "websocket.close", "code": int(code), "reason": ""}
    with contextlib.suppress(RuntimeError, OSError, TimeoutError, WebSocketDisconnect):
        await asyncio.wait_for(send(close), timeout=timeout)
    with contextlib.suppress(TimeoutError, RuntimeError, OSError):
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect" and message.get("code") in (
                    1005,
                    1006,
                ):
                    return


class Refusal(Exception):
    """A handshake the hub answers with an HTTP error instead of an upgrade.

    Args:
        status: HTTP status sent to the client.
        reason: Fixed label for metrics and logs; the body says only the status.
        detail: What the log line adds to the reason, if anything.
    """

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail


_STATUS_TEXT = {401: "unauthorized", 403: "forbidden", 503: "unavailable"}
# When a refused client should come back, for the refusals every node would answer
# alike now: its accept budget (a reconnect storm reaches all of them) and the broker
# (shared). A node that is not ready (draining, starting, cut off from the broker) or
# full says nothing: behind a load balancer the client's next attempt, at once,
# reaches another node (clients add their own jitter either way).
_RETRY_AFTER = {"accept_rate": "1", "broker_refused": "1", "broker_unreachable": "1"}
# How much of a path or a name a refusal's log line shows.
_SHOWN_CHARS = 200


def retry_after(refusal: Refusal) -> str | None:
    """The ``Retry-After`` a refusal is answered with, if any."""
    return _RETRY_AFTER.get(refusal.reason) if refusal.status == 503 else None


def _shown(text: str) -> str:
    """``text`` for a log line: a path or a name can be as long as the request line."""
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


async def _refuse(
    websocket: WebSocket,
    hub: Hub,
    refusal: Refusal,
    why: object = None,
    agent: str | None = None,
) -> None:
    """Answer the handshake with an HTTP status, before any upgrade; logged once,
    naming ``agent`` (as decoded from the path) or else the path, with ``why`` when
    there is more to say than the reason."""
    hub.metrics.connections_refused.labels(refusal.reason).inc()
    path = _shown(agent if agent is not None else websocket.url.path)
    if why is None:
        log.info("refused %s: %s", path, refusal.reason)
    else:
        log.info("refused %s: %s (%s)", path, refusal.reason, _shown(str(why)))
    wait = retry_after(refusal)
    headers = {"Retry-After": wait} if wait is not None else None
    await websocket.send_denial_response(
        PlainTextResponse(_STATUS_TEXT.get(refusal.status, "refused"), refusal.status, headers)
    )


def _bearer_token(websocket: WebSocket) -> str | None:
    value = bearer_value(websocket.headers.get("authorization", ""))
    return value if value is not None else websocket.query_params.get("token")


def admit(websocket: WebSocket, hub: Hub, verifier: TokenVerifier) -> Grant:
    """The checks a handshake passes before anything it asks for is read: whether this
    node takes sockets now, from this page, with this token.

    Raises:
        Refusal: with the HTTP status and reason for the first check failed.
    """
    settings = hub.settings
    origins: OriginPolicy = websocket.app.state.origins
    origin = websocket.headers.get("origin")
    if not origins.allows(origin):
        listing = origins.wants_listing(origin)
        hint = "; with auth off, list it in --allowed-origins" if listing else ""
        raise Refusal(403, "origin_not_allowed", f"Origin {origin!r}{hint}")
    if not hub.ready:
        raise Refusal(503, "not_ready")
    if hub.connection_count >= settings.max_connections:
        raise Refusal(503, "over_capacity")
    if not hub.handshakes.take():
        # A reconnect storm (a node died and its clients come here): the sockets
        # already open keep their latency, the rest retry after backing off.
        raise Refusal(503, "accept_rate")
    try:
        return verifier.verify(_bearer_token(websocket))
    except AuthError as exc:
        raise Refusal(401, exc.reason) from None


def authorize(grant: Grant, params: ConnectionParams) -> None:
    """Whether ``grant`` lets the socket hold its name and pair with its peer.

    Raises:
        Refusal: 403, naming which it may not.
    """
    if not grant.may_hold(params.agent):
        raise Refusal(403, "agent_not_allowed")
    if params.peer is not None and not grant.may_address(params.peer):
        raise Refusal(403, "peer_not_allowed")


async def agent_socket(websocket: WebSocket, raw: AsgiChannel) -> None:
    """Serve one agent socket.

    Args:
        websocket: The socket, as Starlette wraps it.
        raw: The ASGI (send, receive) under it: closing waits for a second
            disconnect event, which Starlette's wrapper would not hand on.
    """
    hub: Hub = websocket.app.state.hub
    settings = hub.settings
    scope = websocket.scope
    try:
        agent = agent_in_path(scope.get("raw_path") or quote(scope["path"]).encode())
    except BadParameters as exc:
        await _refuse(websocket, hub, Refusal(403, "bad_path"), exc)
        return
    try:
        # The token before the parameters: a client without one learns nothing of how
        # they are read, and its refusals count as what they are (missing_token).
        grant = admit(websocket, hub, websocket.app.state.verifier)
        query = query_of(scope.get("query_string", b""))
        params = parse_params(agent, query)
        resuming = session_params(agent, query) if hub.sessions.enabled else None
        authorize(grant, params)
    except (BadParameters, SessionParamError) as exc:
        await _refuse(websocket, hub, Refusal(403, "bad_parameters"), exc, agent)
        return
    except Refusal as refusal:
        await _refuse(websocket, hub, refusal, refusal.detail)
        return
    conn = Connection(
        new_connection_id(hub.node_id),
        params,
        queue_bytes=settings.queue_bytes,
        grant=grant,
        message_rate=TokenBucket(settings.rate_messages),
        # A burst always fits the largest frame allowed.
        byte_rate=TokenBucket(
            settings.rate_bytes, max(settings.rate_bytes, settings.max_message_bytes)
        ),
        frame_rate=TokenBucket(settings.rate_messages * EXTRA_FRAMES_PER_MESSAGE),
    )
    if resuming is not None:
        inline_acks = query.get(sessionframe.ACKS_PARAM) == sessionframe.INLINE
        session_id, received, sent_lost = resuming
        conn.session = Session(
            session_id,
            received,
            inline_acks=inline_acks,
            sent_lost=sent_lost,
            peer_seen=query.get(sessionframe.PEER_SEEN_PARAM) == "1",
        )
    probed = _direct_protocol(websocket)
    if probed is not None:
        conn.client_gone = _hung_up_probe(probed)
    attached = False
    handed_over = False
    try:
        try:
            claimed = await hub.claim(conn)
            conn.client_gone = None  # it holds the transport: not for the socket's life
            headers = await _resume(hub, conn) if claimed else None
        except ClientGone:
            # Nobody reads the answer; counted, so that a storm's waste shows.
            await _refuse(websocket, hub, Refusal(408, "client_gone"))
            return
        except BrokerRefused as exc:
            # Reachable, but refusing the claim's write (ACL, out of memory).
            log.warning("refused %s: redis refused the claim (%s)", agent, exc)
            await _refuse(websocket, hub, Refusal(503, "broker_refused"))
            return
        except ConnectionError as exc:
            log.warning("refused %s: broker unreachable (%s)", agent, exc)
            await _refuse(websocket, hub, Refusal(503, "broker_unreachable"))
            return
        if not claimed:
            await _refuse(websocket, hub, Refusal(403, "claimed_by_newer"))
            return
        await websocket.accept(headers=headers)
        direct = _direct_protocol(websocket)
        if direct is not None:
            conn.outlet = direct
        # Logged at the accept, so open lines come in the order clients saw them.
        log.info(
            "open agent=%s peer=%s conn=%s node=%s", conn.agent, conn.peer, conn.id, hub.node_id
        )
        try:
            await hub.attach(conn)
        except ConnectionError as exc:
            log.warning("closing %s: broker unreachable (%s)", agent, exc)
            conn.request_close(CloseCode.TRY_AGAIN_LATER)
        attached = True
        if conn.session is not None:
            hub.sessions.started(conn)
        if direct is not None:
            # The ending needs only the protocol: the starlette WebSocket, and the
            # headers it caches, are let go with this task.
            protocol = direct
            _serve_direct(
                direct,
                conn,
                hub,
                lambda: _ending(
                    conn, hub, attached=True, open_channel=(protocol.send, protocol.receive)
                ),
            )
            handed_over = True
            return
        await serve_fallback(websocket, conn, hub)
    finally:
        if not handed_over:
            connected = websocket.application_state is WebSocketState.CONNECTED
            channel = raw if attached and connected else None
            await _ending(conn, hub, attached=attached, open_channel=channel)


async def _resume(hub: Hub, conn: Connection) -> list[tuple[bytes, bytes]] | None:
    """Resume a session's socket before it is accepted, once it holds its name (live
    messages wait for the replay): the stream read, the result for the upgrade's
    ``bushub-resume`` header. None for a socket without a session."""
    session = conn.session
    if session is None:
        return None
    resumed = await hub.sessions.resume(conn)
    value = sessionframe.resume_header(resumed.result, resumed.epoch, hub.sessions.window)
    return [(sessionframe.RESUME_HEADER.encode(), value.encode())]


async def _ending(
    conn: Connection, hub: Hub, *, attached: bool, open_channel: AsgiChannel | None
) -> None:
    """Close (when the hub ends the socket), count, log and forget a socket.

    Args:
        attached: The hub started serving the socket (``Hub.attach``).
        open_channel: The socket's raw ASGI (send, receive) while it is accepted
            and open; None when it is closed already.
    """
    reason = close_reason(conn.close_code, conn.socket_close_code)
    if conn.close_code is not None:
        ended = conn.client_close_code is not None or conn.socket_close_code is not None
        if open_channel is not None and not ended:
            # A drain waits for the backlog to reach the client (bounded by the
            # drain); any other close only for the close frame to cross.
            settings = hub.settings
            timeout = (
                settings.drain_timeout if conn.flush_before_close else settings.takeover_timeout
            )
            await _close_and_wait(open_channel, conn.close_code, timeout)
    if attached:
        # Counted and logged before detach lowers the gauge, so a scrape never
        # sees the socket gone without its reason.
        hub.metrics.connections_closed.labels(reason).inc()
        log.info(
            "close agent=%s peer=%s conn=%s node=%s code=%s reason=%s",
            conn.agent,
            conn.peer,
            conn.id,
            hub.node_id,
            int(conn.close_code or conn.socket_close_code or 0) or conn.client_close_code or "-",
            reason,
        )
    await hub.detach(conn, attached=attached)
