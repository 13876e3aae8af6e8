"""A pipecat-ai-subagents worker behind the stock WebSocketProxyClientAgent.

The worker answers tasks (``echo``, ``stream``, ``progress``, ``slow``, ``lifecycle``,
``status``), reports activation, deactivation, end and cancel, and, being bridged, echoes
the pipeline frames it receives: ``InputAudioRawFrame`` comes back as ``OutputAudioRawFrame``
with the same bytes, ``TextFrame("x")`` as ``TextFrame("echo:x")``.

Run: ``python -m tests.agents.subagents_worker --url ws://127.0.0.1:8765 --name worker
--peer client``. Events are JSON lines on stdout.
"""

import asyncio
import os
import sys
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame, TextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat_subagents.agents import BaseAgent, task
from pipecat_subagents.agents.proxy.websocket import WebSocketProxyClientAgent
from pipecat_subagents.bus import (
    BusCancelAgentMessage,
    BusEndAgentMessage,
    BusFrameMessage,
    BusMessage,
    BusTaskCancelMessage,
    BusTaskRequestMessage,
    BusTaskUpdateRequestMessage,
)
from pipecat_subagents.runner import AgentRunner
from pipecat_subagents.types import AgentReadyData

from tests.agents._common import base_parser, close_code, emit, hub_url, serializer, setup_logging


class EchoFrames(FrameProcessor):
    """Turns received audio into output audio and prefixes text, passing the rest on."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(
                audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
            )
        elif direction == FrameDirection.DOWNSTREAM and type(frame) is TextFrame:
            frame = TextFrame(text=f"echo:{frame.text}")
        await self.push_frame(frame, direction)


class Worker(BaseAgent):
    """Answers the test tasks; bridged, so its pipeline sees the peer's frames."""

    def __init__(self, name: str, *, bus: Any, peer: str) -> None:
        super().__init__(name, bus=bus, bridged=())
        self._peer = peer
        self._counter = 0
        self._lifecycle_task: str | None = None
        self._update_requests: dict[str, tuple[int, int]] = {}

    async def build_pipeline(self) -> Pipeline:
        return Pipeline([EchoFrames()])

    async def on_ready(self) -> None:
        await super().on_ready()
        await self.watch_agent(self._peer)

    async def on_agent_ready(self, data: AgentReadyData) -> None:
        await super().on_agent_ready(data)
        if data.agent_name == self._peer:
            emit("peer_ready", runner=data.runner)

    @task(name="echo")
    async def on_echo(self, message: BusTaskRequestMessage) -> None:
        self._counter += 1
        response = {"echo": message.payload, "counter": self._counter, "pid": os.getpid()}
        await self.send_task_response(message.task_id, response)

    @task(name="stream")
    async def on_stream(self, message: BusTaskRequestMessage) -> None:
        chunks = int((message.payload or {}).get("chunks", 3))
        await self.send_task_update(message.task_id, {"progress": 0})
        await self.send_task_stream_start(message.task_id, {"chunks": chunks})
        for seq in range(chunks):
            await self.send_task_stream_data(message.task_id, {"seq": seq, "text": f"part-{seq}"})
        await self.send_task_stream_end(message.task_id, {"chunks": chunks})

    @task(name="progress")
    async def on_progress(self, message: BusTaskRequestMessage) -> None:
        # Answered from on_task_update_requested: an update per request, then a response.
        wanted = int((message.payload or {})["requests"])
        self._update_requests[message.task_id] = (wanted, 0)
        await self.send_task_update(message.task_id, {"requested": 0})

    async def on_task_update_requested(self, message: BusTaskUpdateRequestMessage) -> None:
        await super().on_task_update_requested(message)
        wanted, asked = self._update_requests[message.task_id]
        asked += 1
        self._update_requests[message.task_id] = (wanted, asked)
        if asked < wanted:
            await self.send_task_update(message.task_id, {"requested": asked})
        else:
            del self._update_requests[message.task_id]
            await self.send_task_response(message.task_id, {"requests": wanted})

    @task(name="slow")
    async def on_slow(self, message: BusTaskRequestMessage) -> None:
        emit("task_started", task_id=message.task_id, name="slow")
        await self.send_task_update(message.task_id, {"state": "started"})
        await asyncio.Event().wait()  # until the requester cancels

    async def on_task_cancelled(self, message: BusTaskCancelMessage) -> None:
        await super().on_task_cancelled(message)
        emit("task_cancelled", task_id=message.task_id, reason=message.reason)

    @task(name="lifecycle")
    async def on_lifecycle(self, message: BusTaskRequestMessage) -> None:
        # Kept open: deactivation is reported as an update, activation completes it.
        self._lifecycle_task = message.task_id
        await self.send_task_update(message.task_id, {"state": "watching", "active": self.active})

    @task(name="status")
    async def on_status(self, message: BusTaskRequestMessage) -> None:
        status = {"active": self.active, "args": self.activation_args, "pid": os.getpid()}
        await self.send_task_response(message.task_id, status)

    async def on_activated(self, args: dict | None) -> None:
        await super().on_activated(args)
        emit("activated", args=args)
        if self._lifecycle_task:
            task_id, self._lifecycle_task = self._lifecycle_task, None
            response = {"state": "activated", "active": self.active, "args": args}
            await self.send_task_response(task_id, response)

    async def on_deactivated(self) -> None:
        await super().on_deactivated()
        emit("deactivated")
        if self._lifecycle_task:
            update = {"state": "deactivated", "active": self.active}
            await self.send_task_update(self._lifecycle_task, update)

    async def on_bus_message(self, message: BusMessage) -> None:
        if message.target == self.name and isinstance(message, BusEndAgentMessage):
            emit("end_requested", source=message.source, reason=message.reason)
        elif message.target == self.name and isinstance(message, BusCancelAgentMessage):
            emit("cancel_requested", source=message.source, reason=message.reason)
        await super().on_bus_message(message)


async def main() -> int:
    args = base_parser(__doc__ or "").parse_args()
    setup_logging(args.log_level)

    runner = AgentRunner(handle_sigint=True)
    worker = Worker(args.name, bus=runner.bus, peer=args.peer)
    proxy = WebSocketProxyClientAgent(
        f"{args.name}-proxy",
        bus=runner.bus,
        url=hub_url(args, "subagents"),
        serializer=serializer(args, "subagents"),
        remote_agent_name=args.peer,
        local_agent_name=args.name,
        forward_messages=(BusFrameMessage,),
    )

    @proxy.event_handler("on_connected")
    async def on_connected(_agent: Any, _ws: Any) -> None:
        emit("connected")

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(_agent: Any, ws: Any) -> None:
        emit("disconnected", code=close_code(ws))

    @worker.event_handler("on_ready")
    async def on_worker_ready(_agent: Any) -> None:
        # Connect only once the worker's pipeline runs, so nothing arrives before it can.
        await runner.add_agent(proxy)

    @worker.event_handler("on_finished")
    async def on_worker_finished(_agent: Any) -> None:
        emit("finished")
        await runner.end(reason="worker finished")

    await runner.add_agent(worker)
    await runner.run()
    emit("exit")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
