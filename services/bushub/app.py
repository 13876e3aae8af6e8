"""The FastAPI application of one hub node."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from bushub.auth import TokenVerifier
from bushub.broker import Broker, MemoryBroker
from bushub.endpoint import agent_socket
from bushub.handshake import BAD_UPGRADE
from bushub.hub import Hub
from bushub.metrics import Metrics
from bushub.opsapi import add_operator_routes
from bushub.origins import OriginPolicy
from bushub.settings import CLUSTER_SCHEME, Settings
from bushub.siblings import Siblings, WorkerSlot
from bushub.startfailure import QuietRefusals, StartRefused, refusal
from buswire.channels import node_channel

log = logging.getLogger(__name__)

# Shorter HS256 secrets can be guessed offline from one token (RFC 7518 3.2: a key of
# the hash's size at least).
_SHORT_JWT_SECRET = 32


class AgentSockets:
    """ASGI middleware that serves every WebSocket below FastAPI's routing.

    A socket lives for hours, and every coroutine frame above its handler stays in
    memory for as long: FastAPI's router, dependency solving, exit stacks and
    exception middleware came to ~8 KB per idle socket. The node has no WebSocket
    route but ``/ws/{agent}``, so a socket on any other path is refused and counted
    there too. Everything else goes on to FastAPI.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await agent_socket(WebSocket(scope, receive, send), (send, receive))
            return
        await self.app(scope, receive, send)


def make_broker(settings: Settings) -> Broker:
    """The broker the settings ask for: Redis with a URL, in-process without."""
    if not settings.redis_url:
        return MemoryBroker()
    if settings.redis_url.startswith(CLUSTER_SCHEME):
        from bushub.broker.cluster import RedisClusterBroker

        return RedisClusterBroker("redis://" + settings.redis_url.removeprefix(CLUSTER_SCHEME))
    from bushub.broker.redis import RedisBroker

    return RedisBroker(settings.redis_url, control_channel=node_channel(settings.node_id))


def create_app(
    settings: Settings, broker: Broker | None = None, worker: WorkerSlot | None = None
) -> FastAPI:
    """Build a node's app; the hub starts and stops with the ASGI lifespan.

    Args:
        worker: Given when this node is one worker of several (``--workers``):
            ``/metrics`` and ``/readyz`` then answer for all of them (bushub.siblings).
    """
    metrics = Metrics()
    hub = Hub(settings, broker or make_broker(settings), metrics)

    siblings = Siblings(worker, metrics.render, hub.readiness) if worker is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.redis_url:
            log.warning("no --redis-url: running single-node on the in-process broker")
        if settings.jwt_secret and len(settings.jwt_secret.encode()) < _SHORT_JWT_SECRET:
            log.warning(
                "--jwt-secret is %d bytes: HS256 wants 32 or more (openssl rand -hex 32)",
                len(settings.jwt_secret.encode()),
            )
        try:
            started = await hub.start()
        except Exception as exc:
            refused = refusal(exc)
            if refused is None:
                raise
            log.error("cannot start: %s refused this node: %s", hub.broker.description, refused)
            raise StartRefused from exc
        if not started:
            description = hub.broker.description
            log.warning("stopped before serving: a signal came while starting on %s", description)
            yield  # uvicorn has been told to exit: it stops without serving
            return
        if siblings is not None:
            await siblings.start()
        try:
            yield
        finally:
            await hub.drain(settings.drain_timeout)
            if siblings is not None:
                await siblings.stop()
            await hub.stop()

    # No schema or docs pages: the operator routes are documented in docs/protocol.md,
    # and an unauthenticated /openapi.json would list them to anyone who asks.
    app = FastAPI(
        title="bushub",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # No 307 from /agents/ to /agents: its Location was built from the request's
        # Host header, so any Host the client sent came back as a redirect.
        redirect_slashes=False,
    )
    app.state.hub = hub
    app.state.origins = OriginPolicy(
        settings.split(settings.allowed_origins), auth_enabled=settings.auth_enabled
    )
    app.state.verifier = TokenVerifier(
        settings.jwt_secret,
        settings.split(settings.jwt_public_keys),
        settings.jwt_leeway,
        settings.jwt_audience,
    )
    # The last added is the outermost: a socket goes straight to AgentSockets, with
    # no frame of QuietRefusals' kept above it for the socket's life.
    app.add_middleware(QuietRefusals)
    app.add_middleware(AgentSockets)

    @app.api_route("/ws/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    async def not_a_handshake() -> PlainTextResponse:
        # A plain request on a socket's path (curl to try the URL; an upgrade to
        # something else): 404 said the path was wrong, and nothing counted it.
        metrics.connections_refused.labels(BAD_UPGRADE).inc()
        return PlainTextResponse(
            "/ws/{agent} takes WebSocket handshakes (Upgrade: websocket)\n",
            426,
            headers={"upgrade": "websocket", "connection": "Upgrade"},
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive", "node": settings.node_id}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if siblings is not None:
            ready, body = await siblings.readiness()
        else:
            body = hub.readiness()
            ready = body["ready"]
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        text = await siblings.metrics() if siblings is not None else metrics.render()
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    add_operator_routes(app, hub, app.state.verifier)

    return app
