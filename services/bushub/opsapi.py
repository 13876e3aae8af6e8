"""The operator API's HTTP routes (docs/protocol.md, Operator API).

``/agents``, ``/api/cluster`` and ``/api/tap/{agent}`` need the admin token and are off
without ``--admin-token``; ``/api/send`` also takes an agent token whose grant allows
the target; ``/console`` is the page, which holds no data and asks for the token.
"""

import hmac
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bushub import console
from bushub.auth import OPEN_GRANT, AuthError, Grant, TokenVerifier, bearer_value
from bushub.hub import Hub
from bushub.taps import event_stream
from buswire import DecodeError, validate_agent_name
from buswire.channels import presence_key
from buswire.presence import decode_record

# What an admin route answers while --admin-token is unset.
_OFF = "admin routes are off: set --admin-token"
# An oversize body is read (and thrown away) up to this many times the size limit.
_DRAIN_FACTOR = 4


def _bearer(request: Request) -> str:
    """The bearer credentials offered; "" without them (a bare value is none)."""
    return bearer_value(request.headers.get("authorization", "")) or ""


def _is_admin(offered: str, admin_token: str) -> bool:
    return bool(admin_token) and hmac.compare_digest(offered.encode(), admin_token.encode())


def _refusal(admin_token: str, offered: str) -> JSONResponse | None:
    """The answer to a request without the admin token; None when it has it."""
    if not admin_token:
        return JSONResponse({"error": _OFF}, 403)
    if not _is_admin(offered, admin_token):
        return JSONResponse({"error": "bad admin token"}, 401)
    return None


def add_operator_routes(app: FastAPI, hub: Hub, verifier: TokenVerifier) -> None:
    """Serve the operator API of ``hub`` from ``app``."""
    settings = hub.settings
    admin_token = settings.admin_token
    operators = hub.operators

    @app.get("/console")
    async def console_page() -> Response:
        # Off without --admin-token, like the rest: 403, with the page, which says so.
        status = 200 if admin_token else 403
        return Response(
            console.page(),
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
        refused = _refusal(admin_token, _bearer(request))
        if refused is not None:
            return refused
        try:
            records = await hub.broker.scan_records(presence_key("*"))
        except ConnectionError as exc:  # unreachable, or refusing (BrokerRefused)
            return JSONResponse({"error": f"the broker did not answer: {exc}"}, 503)
        rows = []
        for raw in records:
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
        return JSONResponse({"agents": rows})

    @app.get("/api/cluster")
    async def cluster(request: Request) -> JSONResponse:
        refused = _refusal(admin_token, _bearer(request))
        if refused is not None:
            return refused
        return JSONResponse(await operators.console.answer())

    @app.get("/api/tap/{agent}", response_model=None)
    async def tap(agent: str, request: Request) -> Response:
        refused = _refusal(admin_token, _bearer(request))
        if refused is not None:
            return refused
        try:
            validate_agent_name(agent)
        except DecodeError:
            return JSONResponse({"error": f"not an agent name: {agent!r}"}, 400)
        if hub.draining:
            return JSONResponse({"error": "this node is draining: tap through another"}, 503)

        async def body() -> AsyncIterator[bytes]:
            # Opened here, not before the response: a reader gone before the body starts
            # must not leave a tap behind (a generator that never ran never cleans up).
            stream = await operators.streams.open(agent)
            try:
                async for chunk in event_stream(stream, hub.node_id):
                    yield chunk
            finally:
                await operators.streams.close(stream)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @app.post("/api/send")
    async def send(request: Request) -> JSONResponse:
        offered = _bearer(request)
        grant: Grant = OPEN_GRANT
        if not _is_admin(offered, admin_token):
            if not verifier.enabled:
                refused = _refusal(admin_token, offered)
                assert refused is not None
                return refused
            try:
                grant = verifier.verify(offered or None)
            except AuthError as exc:
                return JSONResponse({"error": f"token refused: {exc.reason}"}, 401)
        data = await _read_body(request, settings.max_message_bytes)
        if isinstance(data, int):
            answer = operators.sender.oversize(data)
        else:
            answer = await operators.sender.send(data, grant)
        return JSONResponse(answer.body, answer.status)


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
    return b"".join(chunks) if size <= limit else size
