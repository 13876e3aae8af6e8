"""A real hub node in the test's event loop: uvicorn on 127.0.0.1 port 0, the
in-process broker, and real ``websockets`` clients.

The server is started the way uvicorn's own tests do (``Server.serve()`` in a task,
wait for ``started``, read the bound port, ``should_exit`` at teardown), with the
same WebSocket implementation and limits as ``bushub serve``.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import uvicorn
from websockets.asyncio.client import connect

from bushub.app import create_app
from bushub.broker import Broker
from bushub.cli import uvicorn_config
from bushub.hub import Hub
from bushub.settings import Settings
from buswire import presence_key
from buswire.presence import record_conn
from tests.support.waiting import until
from tests.unit.bushub.helpers import TIMEOUT, TimedConnection


def small_settings(**overrides: Any) -> Settings:
    """Settings scaled down so presence, grace and takeover act within a test."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "node_id": "unit",
        "log_level": "warning",
        "presence_ttl": 0.6,
        "peer_grace": 0.3,
        "takeover_timeout": 0.5,
        "max_message_bytes": 64 << 10,
        "drain_timeout": 1.0,
    }
    values.update(overrides)
    return Settings(**values).validate()


@dataclass
class RunningHub:
    """One node serving on a real socket."""

    host: str
    port: int
    hub: Hub
    settings: Settings

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws_url(self, agent: str, **query: str) -> str:
        """The socket URL of ``agent``; the name is percent-encoded as a client would."""
        url = f"ws://{self.host}:{self.port}/ws/{quote(agent, safe='')}"
        return f"{url}?{urlencode(query)}" if query else url

    def connect(self, agent: str, /, **query: str) -> Any:
        """A ``websockets`` client for ``agent`` (use with ``async with`` or ``await``)."""
        return self.connect_with({}, agent, **query)

    def connect_with(self, client_options: dict[str, Any], agent: str, /, **query: str) -> Any:
        """Like ``connect`` with extra ``websockets.connect`` options."""
        options: dict[str, Any] = {
            "create_connection": TimedConnection,
            "open_timeout": TIMEOUT,
            "close_timeout": TIMEOUT,
            "max_size": None,
        }
        options.update(client_options)
        return connect(self.ws_url(agent, **query), **options)

    def metric(self, name: str, **labels: str) -> float:
        """A sample's current value; 0 for a series not exported yet."""
        value = self.hub.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def metric_sum(self, name: str) -> float:
        """The sum of a metric's samples over all label values."""
        return sum(
            sample.value
            for family in self.hub.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name
        )

    def nonzero(self, name: str) -> dict[str, float]:
        """A metric's non-zero samples, keyed by their labels, for failure messages."""
        return {
            ",".join(f"{k}={v}" for k, v in sample.labels.items()): sample.value
            for family in self.hub.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name and sample.value
        }

    async def wait_metric(
        self, name: str, expected: float, timeout: float = TIMEOUT, **labels: str
    ) -> None:
        """Wait until a sample reaches ``expected``; fail with the last value seen."""
        if not await until(lambda: self.metric(name, **labels) == expected, timeout, 0.01):
            got = self.metric(name, **labels)
            raise AssertionError(f"{name}{labels} is {got}, expected {expected}")

    async def holder(self, agent: str) -> str | None:
        """The connection id holding ``agent`` in the presence records."""
        [record] = await self.hub.broker.get_records([presence_key(agent)])
        return None if record is None else record_conn(record)

    async def wait_holder(self, agent: str, timeout: float = TIMEOUT) -> str:
        """Wait until some connection holds ``agent``; its id."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (conn := await self.holder(agent)) is None:
            if loop.time() > deadline:
                raise AssertionError(f"no presence record for {agent}")
            await asyncio.sleep(0.01)
        return conn


@asynccontextmanager
async def running_hub(
    settings: Settings, broker: Broker | None = None, **uvicorn_options: Any
) -> AsyncIterator[RunningHub]:
    """Serve a node built from ``settings`` until the block ends.

    Args:
        broker: The node's broker; the in-process one by default.
        uvicorn_options: Overrides of ``bushub serve``'s uvicorn settings
            (``ws="websockets-sansio"`` serves sockets on the ASGI fallback path).
    """
    app = create_app(settings, broker)
    options: dict[str, Any] = {"port": 0, "log_level": "warning", "timeout_graceful_shutdown": 1}
    options.update(uvicorn_options)
    config = uvicorn_config(app, settings, host=settings.host, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not server.started:
        if task.done():
            task.result()  # raises what stopped the server
            raise AssertionError("uvicorn exited before it started")
        if loop.time() > deadline:
            raise AssertionError("uvicorn did not start")
        await asyncio.sleep(0.005)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield RunningHub(host=host, port=port, hub=app.state.hub, settings=settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 3 * TIMEOUT)


@pytest.fixture
def hub_settings() -> Settings:
    """The node's settings; a test module overrides this fixture to change them."""
    return small_settings()


@pytest.fixture
async def node(hub_settings: Settings) -> AsyncIterator[RunningHub]:
    """A running node on the in-process broker."""
    async with running_hub(hub_settings) as running:
        yield running
