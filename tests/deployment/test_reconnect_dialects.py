"""Each dialect's reconnecting proxy inside a real runner, against a scripted WebSocket
server: one socket however often it is activated (the stock proxy dials one per
activation), messages sent before and between sockets reach the server in order, a
recoverable close fires on_reconnecting/on_reconnected and not on_disconnected, and
stopping the runner closes the socket without firing anything."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from busclient.reconnecting import ReconnectPolicy
from tests.deployment.scripted_server import SERVE, ScriptedServer, close
from tests.support.waiting import until

# A backoff long enough that messages told during it surely find no socket.
POLICY = ReconnectPolicy(initial_delay=0.5, max_delay=0.5, jitter=0.0)

DIALECTS = ("subagents", "pipecat")


class Harness:
    """A runner with a local agent and a proxy of the chosen dialect and kind."""

    def __init__(self, dialect: str, url: str, *, reconnecting: bool) -> None:
        self.dialect = dialect
        self.events: list[tuple[str, Any]] = []
        if dialect == "subagents":
            self._build_subagents(url, reconnecting)
        else:
            self._build_pipecat(url, reconnecting)
        for name in ("on_connected", "on_disconnected", "on_reconnecting", "on_reconnected"):
            if name in self.proxy._event_handlers:
                self.proxy.add_event_handler(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., Awaitable[None]]:
        async def record(_proxy: Any, *args: Any) -> None:
            self.events.append((name, args))

        return record

    def _build_subagents(self, url: str, reconnecting: bool) -> None:
        from pipecat_subagents.agents import BaseAgent
        from pipecat_subagents.agents.proxy.websocket import WebSocketProxyClientAgent
        from pipecat_subagents.bus import BusAgentErrorMessage
        from pipecat_subagents.runner import AgentRunner

        from busclient.reconnecting_subagents import ReconnectingWebSocketProxyClientAgent

        self.runner = AgentRunner(handle_sigint=False)
        proxy_class = (
            ReconnectingWebSocketProxyClientAgent if reconnecting else WebSocketProxyClientAgent
        )
        options: dict[str, Any] = {"policy": POLICY} if reconnecting else {}
        self.proxy = proxy_class(
            "proxy",
            bus=self.runner.bus,
            url=url,
            remote_agent_name="remote",
            local_agent_name="local",
            **options,
        )
        harness = self

        class Local(BaseAgent):  # type: ignore[misc]
            async def activate_proxy(self) -> None:
                await self.activate_agent("proxy")

            async def tell(self, tag: str) -> None:
                await self.send_message(
                    BusAgentErrorMessage(source="local", target="remote", error=tag)
                )

        self.local = Local("local", bus=self.runner.bus)
        self._tag_field = "error"

        async def start() -> None:
            await harness.runner.add_agent(harness.local)
            await harness.runner.add_agent(harness.proxy)
            await harness.runner.run()

        self._start = start

    def _build_pipecat(self, url: str, reconnecting: bool) -> None:
        from pipecat.bus import BusWorkerErrorMessage
        from pipecat.workers.base_worker import BaseWorker
        from pipecat.workers.proxy.websocket import WebSocketProxyClient
        from pipecat.workers.runner import WorkerRunner

        from busclient.reconnecting_pipecat import ReconnectingWebSocketProxyClient

        self.runner = WorkerRunner(handle_sigint=False)
        proxy_class = ReconnectingWebSocketProxyClient if reconnecting else WebSocketProxyClient
        options: dict[str, Any] = {"policy": POLICY} if reconnecting else {}
        self.proxy = proxy_class(
            "proxy",
            url=url,
            remote_worker_name="remote",
            local_worker_name="local",
            active=True,
            **options,
        )

        class Local(BaseWorker):
            async def activate_proxy(self) -> None:
                await self.activate_worker("proxy")

            async def tell(self, tag: str) -> None:
                await self.send_bus_message(
                    BusWorkerErrorMessage(source="local", target="remote", error=tag)
                )

        self.local = Local("local")
        self._tag_field = "error"
        harness = self

        async def start() -> None:
            await harness.runner.add_workers(harness.local, harness.proxy)
            await harness.runner.run()

        self._start = start

    def tags(self, server: ScriptedServer) -> list[str]:
        return [json.loads(frame)["__data__"][self._tag_field] for frame in server.received]

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    async def __aenter__(self) -> "Harness":
        self.task = asyncio.ensure_future(self._start())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cancel(reason="test over")
        await asyncio.wait_for(self.task, 10)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_activating_twice_keeps_one_socket(dialect: str) -> None:
    async with ScriptedServer([SERVE]) as server:
        async with Harness(dialect, server.url, reconnecting=True) as h:
            assert await until(lambda: server.handshakes == 1 and h.proxy.connected, 5.0)
            await h.local.activate_proxy()
            await h.local.activate_proxy()
            await asyncio.sleep(0.5)
            assert server.handshakes == 1 and server.most_open == 1
            assert h.names() == ["on_connected"]
        # Stopping the runner closed the socket and fired nothing.
        await server.until(lambda: server.open_now == 0)
        assert h.names() == ["on_connected"]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_the_stock_proxy_dials_again_on_every_activation(dialect: str) -> None:
    """What the reconnecting proxy avoids (0.6.0 may be activated twice: docs/protocol.md,
    Wire facts)."""
    server = ScriptedServer([SERVE])
    async with server, Harness(dialect, server.url, reconnecting=False) as h:
        assert await until(lambda: server.handshakes == 1, 5.0)
        await h.local.activate_proxy()
        assert await until(lambda: server.handshakes == 2, 5.0)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_messages_survive_a_drain_close_in_order(dialect: str) -> None:
    server = ScriptedServer([close(1012, receive=2), SERVE])
    async with server, Harness(dialect, server.url, reconnecting=True) as h:
        assert await until(lambda: h.proxy.connected, 5.0)
        for i in range(2):
            await h.local.tell(f"m{i}")
        assert await until(lambda: "on_reconnecting" in h.names(), 5.0)
        for i in range(2, 6):
            await h.local.tell(f"m{i}")  # sent while no socket is open
        assert await until(lambda: len(server.received) == 6, 5.0)
        assert h.tags(server) == [f"m{i}" for i in range(6)]
        assert h.names() == ["on_connected", "on_reconnecting", "on_reconnected"]
        [(_, (disconnect, attempt, _delay))] = [e for e in h.events if e[0] == "on_reconnecting"]
        assert disconnect.code == 1012 and attempt == 1
        stats = h.proxy.reconnect_stats
        assert (stats.reconnects, stats.flushed, stats.overflowed) == (1, 4, 0)
        assert server.most_open == 1


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_takeover_close_fires_on_disconnected_once(dialect: str) -> None:
    server = ScriptedServer([close(4001, after=0.2), SERVE])
    async with server, Harness(dialect, server.url, reconnecting=True) as h:
        assert await until(lambda: "on_disconnected" in h.names(), 5.0)
        await asyncio.sleep(0.5)
        assert h.names() == ["on_connected", "on_disconnected"]
        assert server.handshakes == 1
        await h.local.tell("after")  # dropped, and counted, like the stock proxy
        assert await until(lambda: h.proxy.reconnect_stats.dropped_stopped == 1, 5.0)
        assert h.proxy.reconnect_stats.gave_up.startswith("refused (close 4001")
