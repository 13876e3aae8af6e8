"""Today's alternative, for one pair: the stock ``WebSocketProxyServerAgent``.

One process: a FastAPI app with an ``AgentRunner`` in it. A socket
``/ws/{agent}?peer=P&format=F`` gets a ``WebSocketProxyServerAgent`` (local agent
``P``, remote agent ``agent``, ``BusFrameMessage`` forwarded) and, if missing, an echo
agent named ``P`` that answers every message from ``agent`` with a copy of it from
itself (source and target swapped), as the pipecat docs' server example would with an
echo agent in place of a worker. Served by ``uvicorn`` with its defaults, as a user
of the library would run it.

    python -m busbench.stock --port 9100
"""

import argparse
import asyncio
import copy
import warnings

warnings.simplefilter("ignore")
warnings.showwarning = lambda *args, **kwargs: None  # pipecat forces "always"

from loguru import logger  # noqa: E402

logger.remove()

import uvicorn  # noqa: E402
from fastapi import FastAPI, WebSocket  # noqa: E402
from pipecat_subagents.agents import BaseAgent  # noqa: E402
from pipecat_subagents.agents.proxy.websocket import WebSocketProxyServerAgent  # noqa: E402
from pipecat_subagents.bus.messages import (  # noqa: E402
    BusFrameMessage,
    BusTaskRequestMessage,
)
from pipecat_subagents.bus.serializers import JSONMessageSerializer  # noqa: E402
from pipecat_subagents.runner import AgentRunner  # noqa: E402

from busclient.subagents import MsgPackMessageSerializer  # noqa: E402


class EchoAgent(BaseAgent):
    """Sends every task request or frame message from its peer back to it."""

    def __init__(self, name: str, *, bus, peer: str) -> None:
        super().__init__(name, bus=bus)
        self._peer = peer

    async def on_bus_message(self, message) -> None:
        if message.source == self._peer and (
            (isinstance(message, BusTaskRequestMessage) and message.target == self.name)
            or isinstance(message, BusFrameMessage)
        ):
            reply = copy.copy(message)
            reply.source, reply.target = self.name, (message.source if message.target else None)
            await self.send_message(reply)
            return
        await super().on_bus_message(message)


def create_app() -> FastAPI:
    state: dict[str, object] = {}

    async def lifespan(app: FastAPI):
        runner = AgentRunner(handle_sigint=False)  # needs the running loop
        state["runner"] = runner
        task = asyncio.create_task(runner.run())
        yield
        await runner.cancel()
        task.cancel()

    app = FastAPI(lifespan=lifespan)
    echoes: set[str] = set()

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.websocket("/ws/{agent}")
    async def ws_endpoint(websocket: WebSocket, agent: str) -> None:
        peer = websocket.query_params.get("peer") or "echo"
        fmt = websocket.query_params.get("format", "json")
        runner = state["runner"]
        assert isinstance(runner, AgentRunner)
        await websocket.accept()
        if peer not in echoes:
            echoes.add(peer)
            await runner.add_agent(EchoAgent(peer, bus=runner.bus, peer=agent))
        done = asyncio.Event()
        proxy = WebSocketProxyServerAgent(
            f"proxy-{agent}",
            bus=runner.bus,
            websocket=websocket,
            agent_name=peer,
            remote_agent_name=agent,
            forward_messages=(BusFrameMessage,),
            serializer=MsgPackMessageSerializer() if fmt == "msgpack" else JSONMessageSerializer(),
        )

        @proxy.event_handler("on_client_disconnected")
        async def on_client_disconnected(_agent, _ws) -> None:
            done.set()

        await runner.add_agent(proxy)
        await done.wait()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="stock proxy baseline for bushub-bench")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
