"""A client agent that asks the worker for work through a bushub hub.

    python examples/client.py ws://127.0.0.1:8766

When the hub announces the worker (``@agent_ready``), the client asks it to ``greet``,
then to ``count`` and prints the stream as it arrives, then ends. The worker may be
connected to any node of the same cluster. The hub URL comes from the first argument,
else ``BUSHUB_URL``.
"""

import asyncio
import os
import sys

from loguru import logger
from pipecat_subagents.agents import BaseAgent, TaskEvent, agent_ready
from pipecat_subagents.agents.proxy.websocket import WebSocketProxyClientAgent
from pipecat_subagents.runner import AgentRunner
from pipecat_subagents.types import AgentReadyData

HUB = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BUSHUB_URL", "ws://127.0.0.1:8765")


class Client(BaseAgent):
    @agent_ready(name="worker")
    async def on_worker_ready(self, data: AgentReadyData) -> None:
        logger.info(f"worker is ready (runner {data.runner})")
        # Don't hold up the bus while the conversation runs.
        self.create_asyncio_task(self.ask(), "ask")

    async def ask(self) -> None:
        async with self.task("worker", name="greet", payload={"name": "bushub"}, timeout=10) as t:
            pass
        print(t.response["greeting"])

        async with self.task("worker", name="count", payload={"upto": 5}, timeout=10) as t:
            async for event in t:
                if event.type == TaskEvent.STREAM_DATA:
                    print("count:", event.data["n"])
        print("stream ended:", t.response)

        await self.end(reason="done")


async def main() -> None:
    runner = AgentRunner()
    client = Client("client", bus=runner.bus)
    # This socket is "client" and talks to "worker"; untargeted messages go to "worker".
    proxy = WebSocketProxyClientAgent(
        "client-proxy",
        bus=runner.bus,
        url=f"{HUB}/ws/client?peer=worker&dialect=subagents",
        remote_agent_name="worker",
        local_agent_name="client",
    )

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(agent, websocket):
        logger.warning("hub connection closed (the worker left?); stopping")
        await runner.cancel()

    await runner.add_agent(client)
    await runner.add_agent(proxy)
    logger.info(f"client connecting to {HUB}")
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main())
