"""A background loop that fails is logged, holds readiness down while it waits, and
is started again; the node must not drift into a silent, permanent drain (its
heartbeat lapsing under open sockets, every new socket refused)."""

import asyncio
import logging

import httpx
import pytest

from bushub.broker import MemoryBroker
from bushub.broker.memorynodes import MemoryNodeRegistry
from bushub.broker.nodes import Beat, NodeRegistry
from tests.unit.bushub.conftest import running_hub, small_settings
from tests.unit.bushub.helpers import TIMEOUT, wait_until


class FlakyRegistry(MemoryNodeRegistry):
    """The in-process node registry, whose next heartbeat fails with a bug's exception
    (not a ConnectionError: something nobody foresaw)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False
        self.beats = 0

    async def beat(self, node: str, ttl: float) -> Beat:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("unforeseen")
        self.beats += 1
        return await super().beat(node, ttl)


class FlakyBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        self.registry = FlakyRegistry()

    @property
    def nodes(self) -> NodeRegistry:
        return self.registry


async def test_a_failed_reconcile_loop_is_restarted_and_the_node_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = FlakyBroker()
    settings = small_settings()
    async with (
        running_hub(settings, broker) as node,
        httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http,
    ):
        hub = node.hub
        async with node.connect("worker"):
            await node.wait_holder("worker")
            with caplog.at_level(logging.ERROR, logger="bushub.hub"):
                broker.registry.fail_next = True
                await wait_until(lambda: not broker.registry.fail_next, "the failing heartbeat")
                await wait_until(lambda: not hub.ready, "readiness down")
                assert (await http.get("/readyz")).status_code == 503
            # Restarted: ready again, and beating for longer than its TTL.
            await wait_until(lambda: hub.ready, "readiness back")
            assert "background task presence-heartbeat failed; restarting" in caplog.text
            beats = broker.registry.beats
            await asyncio.sleep(settings.presence_ttl * 1.5)
            assert broker.registry.beats >= beats + 2
            assert await node.holder("worker") is not None
            assert (await http.get("/readyz")).status_code == 200
            assert not hub.draining
        # New sockets are taken again.
        async with node.connect("client", peer="worker"):
            await node.wait_holder("client")
