"""A pipecat-ai-subagents client behind the stock WebSocketProxyClientAgent.

It watches its peer (``watch_agent``; ``on_agent_ready`` fires on every announcement by a
new runner), then runs the scenario named by ``--scenario`` (see ``_scenarios.py``) and
exits 0 when it passed. Its pipeline holds a ``BusBridgeProcessor``, the way a transport
agent exchanges frames with a bridged agent.

Run: ``python -m tests.agents.subagents_client --url ws://127.0.0.1:8765 --name client
--peer worker --scenario tasks``. Events are JSON lines on stdout.
"""

import asyncio
import sys
from typing import Any

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    TextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat_subagents.agents import AgentActivationArgs, BaseAgent, TaskError
from pipecat_subagents.agents.proxy.websocket import WebSocketProxyClientAgent
from pipecat_subagents.bus import (
    BusBridgeProcessor,
    BusCancelAgentMessage,
    BusEndAgentMessage,
    BusFrameMessage,
    BusTaskResponseMessage,
)
from pipecat_subagents.runner import AgentRunner
from pipecat_subagents.types import AgentReadyData

from tests.agents._common import (
    AUDIO_SAMPLE_RATE,
    base_parser,
    emit,
    hub_url,
    serializer,
    setup_logging,
)
from tests.agents._scenarios import (
    ClientState,
    TaskEventHandler,
    TaskFailed,
    add_scenario_args,
    run_scenario,
)


class FrameCollector(FrameProcessor):
    """Records the audio and text frames that come back from the peer."""

    def __init__(self, state: ClientState) -> None:
        super().__init__()
        self._state = state

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, (OutputAudioRawFrame, InputAudioRawFrame)):
            kind = type(frame).__name__
            self._state.audio_frame(kind, frame.audio, frame.sample_rate, frame.num_channels)
        elif type(frame) is TextFrame:
            self._state.text_frame(frame.text)
        await self.push_frame(frame, direction)


class Client(BaseAgent):
    """Implements the scenario primitives with the subagents API."""

    def __init__(self, name: str, *, bus: Any, peer: str, proxy_name: str, timeout: float):
        super().__init__(name, bus=bus)
        self.peer = peer
        self.state = ClientState(timeout)
        self._proxy_name = proxy_name
        self._timeout = timeout

    async def build_pipeline(self) -> Pipeline:
        bridge = BusBridgeProcessor(bus=self.bus, agent_name=self.name)
        return Pipeline([bridge, FrameCollector(self.state)])

    async def on_ready(self) -> None:
        await super().on_ready()
        await self.watch_agent(self.peer)

    async def on_agent_ready(self, data: AgentReadyData) -> None:
        await super().on_agent_ready(data)
        if data.agent_name == self.peer:
            self.state.peer_ready(data.runner)

    async def on_task_response(self, message: BusTaskResponseMessage) -> None:
        await super().on_task_response(message)
        self.state.response(message.task_id, str(message.status), message.response)

    # ClientOps

    async def run_task(
        self, name: str, payload: dict[str, Any], on_event: TaskEventHandler | None = None
    ) -> dict[str, Any]:
        try:
            async with self.task(self.peer, name=name, payload=payload, timeout=self._timeout) as t:
                async for event in t:
                    if on_event is not None:
                        await on_event(event.type, event.data, t.task_id)
        except TaskError as exc:
            raise TaskFailed(f"task {name}: {exc}") from exc
        return t.response

    async def fire_task(self, name: str, payload: dict[str, Any]) -> str:
        return await self.request_task(self.peer, name=name, payload=payload, timeout=self._timeout)

    async def abort_task(self, task_id: str, reason: str) -> None:
        await self.cancel_task(task_id, reason=reason)

    async def request_update(self, task_id: str) -> None:
        await self.request_task_update(task_id, self.peer)

    async def deactivate_peer(self) -> None:
        await self.deactivate_agent(self.peer)

    async def activate_peer(self, metadata: dict[str, Any]) -> None:
        await self.activate_agent(self.peer, args=AgentActivationArgs(metadata=metadata))

    async def end_peer(self, reason: str) -> None:
        await self.send_message(
            BusEndAgentMessage(source=self.name, target=self.peer, reason=reason)
        )

    async def cancel_peer(self, reason: str) -> None:
        message = BusCancelAgentMessage(source=self.name, target=self.peer, reason=reason)
        await self.send_message(message)

    async def reactivate_proxy(self) -> None:
        # 0.6.0 lets an active proxy be activated again: it dials a second socket.
        await self.activate_agent(self._proxy_name)

    async def send_audio(self, chunk: bytes) -> None:
        frame = InputAudioRawFrame(audio=chunk, sample_rate=AUDIO_SAMPLE_RATE, num_channels=1)
        await self.queue_frame(frame)

    async def send_text(self, text: str) -> None:
        await self.queue_frame(TextFrame(text=text))


async def main() -> int:
    parser = base_parser(__doc__ or "")
    add_scenario_args(parser)
    args = parser.parse_args()
    setup_logging(args.log_level)

    runner = AgentRunner(handle_sigint=True)
    proxy_name = f"{args.name}-proxy"
    client = Client(
        args.name, bus=runner.bus, peer=args.peer, proxy_name=proxy_name, timeout=args.timeout
    )
    proxy = WebSocketProxyClientAgent(
        proxy_name,
        bus=runner.bus,
        url=hub_url(args, "subagents"),
        serializer=serializer(args, "subagents"),
        remote_agent_name=args.peer,
        local_agent_name=args.name,
        forward_messages=(BusFrameMessage,),
    )
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    @proxy.event_handler("on_connected")
    async def on_connected(_agent: Any, ws: Any) -> None:
        client.state.connected(ws)

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(_agent: Any, ws: Any) -> None:
        client.state.disconnected(ws)

    async def scenario() -> None:
        outcome.set_result(await run_scenario(client, args))

    @client.event_handler("on_ready")
    async def on_client_ready(_agent: Any) -> None:
        client.create_asyncio_task(scenario(), "scenario")
        await runner.add_agent(proxy)

    await runner.add_agent(client)
    run = asyncio.ensure_future(runner.run())
    await asyncio.wait({run, outcome}, return_when=asyncio.FIRST_COMPLETED)
    ok = outcome.done() and outcome.result()
    if not run.done():
        await runner.cancel(reason="scenario over")
        try:
            await asyncio.wait_for(run, args.timeout)
        except TimeoutError:
            emit("shutdown_timeout")
    emit("exit", ok=ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
