"""What a node keeps per agent must go when the agent goes.

The process-level churn test sees memory and descriptors from outside; this one looks
inside. A node runs in the test's own event loop (uvicorn serving the real app on a
real Redis, as ``bushub serve`` does), real ``websockets`` clients come and go with
unique agent names, and afterwards every per-agent structure of the hub must be empty
and the event loop must hold no more tasks than before: tasks, subscriptions, timers,
presence bookkeeping. A structure that keeps one entry per agent name ever seen grows
without bound on a node that serves short-lived, uniquely named agents (sessions).
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect

from bushub.app import create_app
from bushub.broker.redis import RedisBroker
from bushub.cli import uvicorn_config
from bushub.hub import Hub
from bushub.settings import Settings
from buswire import sessionframe
from tests.integration.procs import TIMEOUT
from tests.reliability.harness import FaultRedis
from tests.support.messages import encode, task_request
from tests.support.waiting import until

pytestmark = pytest.mark.integration

PAIRS = 150
LONERS = 150  # agents whose peer never connects


@asynccontextmanager
async def _serve(settings: Settings) -> AsyncIterator[tuple[Hub, int]]:
    app = create_app(settings)
    config = uvicorn_config(
        app, settings, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    assert await until(lambda: server.started or task.done(), TIMEOUT)
    assert server.started, task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield app.state.hub, port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 3 * TIMEOUT)


def _state(hub: Hub) -> dict[str, int]:
    """Sizes of every per-agent structure of the hub (and its broker's channel set)."""
    sizes = dict(hub.presence.per_agent_sizes())
    sizes["subscriptions"] = len(hub.subscriptions)
    assert isinstance(hub.broker, RedisBroker)
    sizes["broker channels"] = hub.broker.channel_count
    sizes["hub tasks"] = hub.task_count
    sizes["publisher pending"] = hub.publisher.pending
    sizes.update(hub.sessions.sizes())
    sizes.update(hub.operators.sizes())
    return sizes


async def test_per_agent_state_is_gone_after_the_agents_are(tmp_path: Path, figures: Any) -> None:
    redis = FaultRedis(tmp_path / "redis.log")
    redis.start()
    settings = Settings(
        host="127.0.0.1",
        port=0,
        node_id="state",
        redis_url=redis.url,
        presence_ttl=2.0,
        peer_grace=0.5,
        log_level="warning",
    ).validate()
    try:
        async with _serve(settings) as (hub, port):
            empty = _state(hub)
            tasks_before = len(asyncio.all_tasks())

            async def open_(agent: str, peer: str, session: bool = False) -> Any:
                url = f"ws://127.0.0.1:{port}/ws/{agent}?peer={peer}&on_peer_lost=close"
                if session:  # a reconnecting proxy's socket (docs/protocol.md, Sessions)
                    url += f"&session={agent}&received=0"
                return await connect(url, open_timeout=TIMEOUT, ping_interval=None)

            async def pair(i: int) -> None:
                session = i % 2 == 1
                a = await open_(f"st-{i}-a", f"st-{i}-b", session)
                b = await open_(f"st-{i}-b", f"st-{i}-a", session)
                for seq in range(5):
                    data = encode(task_request(f"st-{i}-a", f"st-{i}-b", seq))
                    await a.send(sessionframe.message(seq + 1, data) if session else data)
                if i % 3 == 0:
                    a.transport.abort()  # vanish; b is then closed with 4002 or by us
                else:
                    await a.close()
                await b.close()

            async def loner(i: int) -> None:
                ws = await open_(f"st-lone-{i}", f"st-nobody-{i}")
                await ws.send(encode(task_request(f"st-lone-{i}", f"st-nobody-{i}", 0)))
                await ws.close()

            await asyncio.gather(*(pair(i) for i in range(PAIRS)))
            await asyncio.gather(*(loner(i) for i in range(LONERS)))
            assert await until(lambda: hub.connection_count == 0, TIMEOUT)
            await asyncio.sleep(settings.presence_ttl)  # timers, events and a reconcile pass
            after = _state(hub)
            tasks_after = len(asyncio.all_tasks())
            figures("hub state when empty", empty)
            figures("hub state after 150 pairs and 150 loners came and went", after)
            figures("event loop tasks before / after", f"{tasks_before} / {tasks_after}")
            assert tasks_after <= tasks_before
            grown = {k: (empty[k], v) for k, v in after.items() if v > empty[k]}
            assert grown == {}, f"per-agent state left behind (empty, after): {grown}"
    finally:
        redis.stop()
