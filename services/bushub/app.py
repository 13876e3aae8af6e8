"""The FastAPI application of one hub node."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from bushub.broker import Broker, MemoryBroker
from bushub.endpoint import agent_socket
from bushub.hub import Hub
from bushub.metrics import Metrics
from bushub.settings import Settings

log = logging.getLogger(__name__)


def make_broker(settings: Settings) -> Broker:
    """The broker the settings ask for: Redis with a URL, in-process without."""
    if not settings.redis_url:
        return MemoryBroker()
    from bushub.broker.redis import RedisBroker

    return RedisBroker(settings.redis_url, control_channel=f"bushub:node:{settings.node_id}")


def create_app(settings: Settings, broker: Broker | None = None) -> FastAPI:
    """Build a node's app; the hub starts and stops with the ASGI lifespan."""
    metrics = Metrics()
    hub = Hub(settings, broker or make_broker(settings), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.redis_url:
            log.warning("no --redis-url: running single-node on the in-process broker")
        await hub.start()
        log.info("node %s serving on %s", settings.node_id, hub.broker.description)
        try:
            yield
        finally:
            await hub.drain(settings.drain_timeout)
            await hub.stop()

    app = FastAPI(title="bushub", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.hub = hub
    app.add_api_websocket_route("/ws/{agent}", agent_socket)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive", "node": settings.node_id}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = hub.ready
        body = {"ready": ready, "broker_up": hub.broker.up, "draining": hub.draining}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
