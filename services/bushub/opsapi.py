"""The operator API's HTTP routes (docs/protocol.md, Operator API).

``/agents``, ``/api/cluster`` and ``/api/tap/{agent}`` need the admin token and are off
without ``--admin-token``; ``/api/send`` also takes an agent token whose grant allows
the target; ``/console`` is the page, which holds no data and asks for the token.
"""

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from bushub import console
from bushub.auth import OPEN_GRANT, AuthError, Grant, TokenVerifier, bearer_value
from bushub.endpoint import BadParameters, agent_in_path
from bushub.hub import Hub
from bushub.taps import event_stream
from buswire import DecodeError, validate_agent_name
from buswire.channels import presence_key
from buswire.presence import decode_record

log = logging.getLogger(__name__)

# Under this many characters an admin token could be guessed: 730 tries a second
# reach a node, and each gets an answer.
_SHORT_ADMIN_TOKEN = 16
# A tap's path, whose one segment names the agent as a socket's does.
_TAP_PATH = b"/api/tap/"
# What an admin route answers while --admin-token is unset.
_OFF = "admin routes are off: set --admin-token"
# What an admin route answers to a request that offers no bearer token at all.
_REQUIRED = "admin token required: send Authorization: Bearer <admin token>"
# An oversize body is read (and thrown away) up to this many times the size limit.
_DRAIN_FACTOR = 4
# Agents ``/agents`` lists at most (``truncated`` past it: a sample, not the first by
# name). Unbounded, 100,000 agents' records took the answering node 2.3 s of CPU on
# its event loop, every socket of it waiting, for a 12 MB answer; /api/cluster is
# bounded per node.
AGENTS_MOST = 10_000


# The answers carry what the cluster looks like, and may be read with the admin token:
# no cache keeps them, and no browser reads them as anything but JSON.
_API_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


def _answer(body: object, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status, headers=_API_HEADERS)


def _bearer(request: Request) -> str:
    """The bearer credentials offered; "" without them (a bare value is none)."""
    return bearer_value(request.headers.get("authorization", "")) or ""


def _is_admin(offered: str, admin_token: str) -> bool:
    return bool(admin_token) and hmac.compare_digest(offered.encode(), admin_token.encode())


def add_operator_routes(app: FastAPI, hub: Hub, verifier: TokenVerifier) -> None:
    """Serve the operator API of ``hub`` from ``app``."""
    settings = hub.settings
    admin_token = settings.admin_token
    operators = hub.operators
    refusals = hub.metrics.operator_refused
    if admin_token and len(admin_token) < _SHORT_ADMIN_TOKEN:
        log.warning(
            "--admin-token is %d characters: short enough to guess; use 32 random ones "
            "(openssl rand -hex 16)",
            len(admin_token),
        )

    def refused(request: Request, reason: str, status: int, error: str) -> JSONResponse:
        """Counted, and logged (rate-limited: a guessing client writes one line per
        interval): someone holding no admin token is knocking."""
        refusals.labels(reason).inc()
        if reason != "off":
            client = request.client.host if request.client else "?"
            log.warning(
                "refused %s %s from %s: %s", request.method, request.url.path, client, reason
            )
        return _answer({"error": error}, status)

    def not_admin(request: Request) -> JSONResponse | None:
        """The answer to a request without the admin token; None when it has it."""
        if not admin_token:
            return refused(request, "off", 403, _OFF)
        offered = _bearer(request)
        if not offered:
            # Nothing offered is a different mistake from a wrong token (a script that
            # forgot the header, or sent the token without "Bearer "): say which. Both
            # count as bad_admin_token, the reason the metric has always had for them.
            return refused(request, "bad_admin_token", 401, _REQUIRED)
        if not _is_admin(offered, admin_token):
            return refused(request, "bad_admin_token", 401, "bad admin token")
        return None

    @app.get("/console")
    async def console_page() -> Response:
        # Off without --admin-token, like the rest: 403, with the page, which says so.
        status = 200 if admin_token else 403
        return Response(
            console.page(on=bool(admin_token)),
            status,
            # Never inside another site's frame (the page holds an admin token).
            headers={
                "x-frame-options": "DENY",
                "content-security-policy": "frame-ancestors 'none'",
            },
            media_type="text/html; charset=utf-8",
        )

    @app.get("/agents")
    async def agents(request: Request) -> JSONResponse:
        """Cluster-wide presence, from the presence records."""
        refusal = not_admin(request)
        if refusal is not None:
            return refusal
        try:
            records = await hub.broker.scan_records(presence_key("*"), AGENTS_MOST + 1)
        except ConnectionError as exc:  # unreachable, or refusing (BrokerRefused)
            return _answer({"error": f"the broker did not answer: {exc}"}, 503)
        truncated = len(records) > AGENTS_MOST
        rows = []
        for raw in records[:AGENTS_MOST]:
            try:
                record = decode_record(raw)
            except DecodeError:
                continue
            rows.append(
                {
                    "agent": record.agent,
                    "node": record.node,
                    "connected_since": record.since,
                    "format": record.format,
                    "dialect": record.dialect,
                    "peer": record.peer,
                }
            )
        rows.sort(key=lambda row: str(row["agent"]))
        return _answer({"agents": rows, "truncated": truncated})

    @app.get("/api/cluster")
    async def cluster(request: Request) -> JSONResponse:
        refusal = not_admin(request)
        if refusal is not None:
            return refusal
        return _answer(await operators.console.answer())

    # A tap the drain ends while its reader is not reading is no error (_TapResponse).
    # (One filter for every app: adding it again changes nothing.)
    logging.getLogger("uvicorn.error").addFilter(_QUIET_DRAINED_TAPS)

    # Any path below /api/tap/: a name with a slash (encoded or not), or none, is
    # answered 400 as the name it is (it matched no route: a framework 404).
    @app.get("/api/tap/{agent:path}", response_model=None)
    async def tap(agent: str, request: Request) -> Response:
        refusal = not_admin(request)
        if refusal is not None:
            return refusal
        # From the raw path, as a socket's name is: the decoded one turns bytes that
        # are not UTF-8 into U+FFFD (/api/tap/%FF tapped an agent named "\ufffd").
        raw = request.scope.get("raw_path") or quote(request.scope["path"]).encode()
        raw = raw.split(b"?", 1)[0]
        try:
            agent = validate_agent_name(agent_in_path(raw, _TAP_PATH))
        except (BadParameters, DecodeError):
            named = raw[len(_TAP_PATH) :].decode("ascii", "replace")
            return _answer({"error": f"not an agent name: {named!r} (as sent)"}, 400)
        if hub.draining:
            return _answer({"error": "this node is draining: tap through another"}, 503)

        async def body() -> AsyncIterator[bytes]:
            # Opened here, not before the response: a reader gone before the body starts
            # must not leave a tap behind (a generator that never ran never cleans up).
            stream = await operators.streams.open(agent)
            try:
                async for chunk in event_stream(stream, hub.node_id):
                    yield chunk
            finally:
                await operators.streams.close(stream)

        return _TapResponse(body(), lambda: hub.draining)

    @app.post("/api/send")
    async def send(request: Request) -> JSONResponse:
        offered = _bearer(request)
        grant: Grant = OPEN_GRANT
        if not _is_admin(offered, admin_token):
            if not verifier.enabled:
                refusal = not_admin(request)
                assert refusal is not None
                if refusal.status_code == 401:
                    operators.sender.unauthorized()
                return refusal
            try:
                grant = verifier.verify(offered or None)
            except AuthError as exc:
                operators.sender.unauthorized()
                return refused(request, "bad_token", 401, f"token refused: {exc.reason}")
        try:
            data = await _read_body(request, settings.max_message_bytes)
        except ClientDisconnect:
            # Its connection ended (the client left, or its body stopped coming and the
            # handshake guard answered 408): nobody to answer, nothing to report.
            return _answer({"error": "the request's body did not come whole"}, 400)
        if isinstance(data, int):
            answer = operators.sender.oversize(data)
        else:
            answer = await operators.sender.send(data, grant)
        return _answer(answer.body, answer.status)


# Noted on the cancellation that ends a tap response at shutdown (see _TapResponse).
_ENDED_BY_DRAIN = "bushub: a tap the drain ended, whose reader was not reading"


class _TapResponse(StreamingResponse):
    """A tap's event stream, which ends without an error report when the node drains.

    The drain ends every tap at once (``TapStreams.end_all``), but a tap whose reader
    stopped reading is waiting to write, and only uvicorn's cancel after its graceful
    shutdown timeout ends it. That is the expected end of such a tap; uvicorn reports
    it as "Exception in ASGI application" with a traceback. ASGI gives the application
    no way to close the connection instead, so the cancellation is noted as this one,
    and the report dropped (``_QuietDrainedTaps``).
    """

    def __init__(self, body: AsyncIterator[bytes], draining: Callable[[], bool]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )
        self._draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError as exc:
            if self._draining():
                exc.add_note(_ENDED_BY_DRAIN)
            raise


class _QuietDrainedTaps(logging.Filter):
    """Drops uvicorn's report of a cancellation ``_TapResponse`` noted; any other
    exception, and any other cancellation, is still reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(exc, asyncio.CancelledError)
            and _ENDED_BY_DRAIN in getattr(exc, "__notes__", ())
        )


_QUIET_DRAINED_TAPS = _QuietDrainedTaps()


async def _read_body(request: Request, limit: int) -> bytes | int:
    """The request body; its size instead when it is over ``limit`` bytes (counted as
    far as it was read), so the node never holds more than the limit.

    The rest of an oversize body is read and thrown away, up to ``_DRAIN_FACTOR`` times
    the limit, so that a client that writes its whole body before it reads (most do,
    curl aside) gets the 413 rather than a reset connection. A client that asked
    ``Expect: 100-continue`` with a ``Content-Length`` over the limit has sent nothing
    yet: it gets the 413 at once.
    """
    declared = request.headers.get("content-length", "")
    if (
        declared.isdigit()
        and int(declared) > limit
        and request.headers.get("expect", "").lower() == "100-continue"
    ):
        return int(declared)  # never read, so uvicorn sends no 100 Continue
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit * _DRAIN_FACTOR:
            break
    if size <= limit:
        return b"".join(chunks)
    # The size declared, where it was: the reading stops short of a large body.
    return int(declared) if declared.isdigit() else size
