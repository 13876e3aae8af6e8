"""A worker agent that other processes reach through a bushub hub.

    python examples/worker.py ws://127.0.0.1:8765

It answers two tasks: ``greet`` (one response) and ``count`` (a stream of numbers).
Nothing here is bushub-specific: it is the stock pipecat-ai-subagents
``WebSocketProxyClientAgent``, pointed at the hub instead of at another agent's server.
The hub URL comes from the first argument, else ``BUSHUB_URL``.
"""

import asyncio
import os
import sys

from loguru import logger
from pipecat_subagents.agents import BaseAgent, task
from pipecat_subagents.agents.proxy.websocket import WebSocketProxyClientAgent
from pipecat_subagents.bus import BusTaskRequestMessage
from pipecat_subagents.runner import AgentRunner

HUB = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BUSHUB_URL", "ws://127.0.0.1:8765")


class Worker(BaseAgent):
    @task(name="greet")
    async def greet(self, message: BusTaskRequestMessage) -> None:
        name = (message.payload or {}).get("name", "world")
        await self.send_task_response(message.task_id, {"greeting": f"Hello, {name}!"})

    @task(name="count")
    async def count(self, message: BusTaskRequestMessage) -> None:
        upto = int((message.payload or {}).get("upto", 3))
        await self.send_task_stream_start(message.task_id, {"upto": upto})
        for n in range(1, upto + 1):
            await self.send_task_stream_data(message.task_id, {"n": n})
            await asyncio.sleep(0.2)
        await self.send_task_stream_end(message.task_id, {"total": upto})


async def main() -> None:
    runner = AgentRunner()
    worker = Worker("worker", bus=runner.bus)
    # The hub knows agents by name: this socket is "worker" and talks to "client".
    # dialect=subagents: announce peers with this library's registry message only.
    # on_peer_lost=keep: stay connected while clients come and go.
    proxy = WebSocketProxyClientAgent(
        "worker-proxy",
        bus=runner.bus,
        url=f"{HUB}/ws/worker?peer=client&dialect=subagents&on_peer_lost=keep",
        remote_agent_name="client",
        local_agent_name="worker",
    )

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(agent, websocket):
        logger.warning("hub connection closed; stopping")
        await runner.cancel()

    await runner.add_agent(worker)
    await runner.add_agent(proxy)
    logger.info(f"worker connecting to {HUB}")
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main())
