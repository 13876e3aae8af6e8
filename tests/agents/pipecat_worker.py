"""A pipecat core (``pipecat.workers``) worker behind the stock WebSocketProxyClient.

The same worker as ``subagents_worker`` in the renamed API (worker/job instead of
agent/task): it answers jobs (``echo``, ``stream``, ``progress``, ``slow``, ``lifecycle``,
``status``), reports activation, deactivation, end and cancel, and, being a bridged
``PipelineWorker``, echoes the frames it receives: ``InputAudioRawFrame`` comes back as
``OutputAudioRawFrame`` with the same bytes, ``TextFrame("x")`` as ``TextFrame("echo:x")``.

Run: ``python -m tests.agents.pipecat_worker --url ws://127.0.0.1:8765 --name worker
--peer client``. Events are JSON lines on stdout.
"""

import asyncio
import os
import sys
from typing import Any

from pipecat.bus import (
    BusCancelWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobUpdateRequestMessage,
    BusMessage,
)
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame, TextFrame
from pipecat.pipeline.job_decorator import job
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.registry.types import WorkerReadyData
from pipecat.workers.proxy.websocket import WebSocketProxyClient
from pipecat.workers.runner import WorkerRunner

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


class Worker(PipelineWorker):
    """Answers the test jobs; bridged, so its pipeline sees the peer's frames."""

    def __init__(self, name: str, *, peer: str) -> None:
        super().__init__(
            Pipeline([EchoFrames()]),
            name=name,
            bridged=(),
            idle_timeout_secs=None,
            enable_turn_tracking=False,
        )
        self._peer = peer
        self._counter = 0
        self._lifecycle_job: str | None = None
        self._update_requests: dict[str, tuple[int, int]] = {}

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        await super().on_worker_ready(data)
        if data.worker_name == self._peer:
            emit("peer_ready", runner=data.runner)

    @job(name="echo")
    async def on_echo(self, message: BusJobRequestMessage) -> None:
        self._counter += 1
        response = {"echo": message.payload, "counter": self._counter, "pid": os.getpid()}
        await self.send_job_response(message.job_id, response)

    @job(name="stream")
    async def on_stream(self, message: BusJobRequestMessage) -> None:
        chunks = int((message.payload or {}).get("chunks", 3))
        await self.send_job_update(message.job_id, {"progress": 0})
        await self.send_job_stream_start(message.job_id, {"chunks": chunks})
        for seq in range(chunks):
            await self.send_job_stream_data(message.job_id, {"seq": seq, "text": f"part-{seq}"})
        await self.send_job_stream_end(message.job_id, {"chunks": chunks})

    @job(name="progress")
    async def on_progress(self, message: BusJobRequestMessage) -> None:
        # Answered from on_job_update_requested: an update per request, then a response.
        wanted = int((message.payload or {})["requests"])
        self._update_requests[message.job_id] = (wanted, 0)
        await self.send_job_update(message.job_id, {"requested": 0})

    async def on_job_update_requested(self, message: BusJobUpdateRequestMessage) -> None:
        await super().on_job_update_requested(message)
        wanted, asked = self._update_requests[message.job_id]
        asked += 1
        self._update_requests[message.job_id] = (wanted, asked)
        if asked < wanted:
            await self.send_job_update(message.job_id, {"requested": asked})
        else:
            del self._update_requests[message.job_id]
            await self.send_job_response(message.job_id, {"requests": wanted})

    @job(name="slow")
    async def on_slow(self, message: BusJobRequestMessage) -> None:
        emit("task_started", task_id=message.job_id, name="slow")
        await self.send_job_update(message.job_id, {"state": "started"})
        await asyncio.Event().wait()  # until the requester cancels

    async def on_job_cancelled(self, message: BusJobCancelMessage) -> None:
        await super().on_job_cancelled(message)
        emit("task_cancelled", task_id=message.job_id, reason=message.reason)

    @job(name="lifecycle")
    async def on_lifecycle(self, message: BusJobRequestMessage) -> None:
        # Kept open: deactivation is reported as an update, activation completes it.
        self._lifecycle_job = message.job_id
        await self.send_job_update(message.job_id, {"state": "watching", "active": self.active})

    @job(name="status")
    async def on_status(self, message: BusJobRequestMessage) -> None:
        status = {"active": self.active, "args": self.activation_args, "pid": os.getpid()}
        await self.send_job_response(message.job_id, status)

    async def on_activated(self, args: dict | None) -> None:
        await super().on_activated(args)
        emit("activated", args=args)
        if self._lifecycle_job:
            job_id, self._lifecycle_job = self._lifecycle_job, None
            response = {"state": "activated", "active": self.active, "args": args}
            await self.send_job_response(job_id, response)

    async def on_deactivated(self) -> None:
        await super().on_deactivated()
        emit("deactivated")
        if self._lifecycle_job:
            update = {"state": "deactivated", "active": self.active}
            await self.send_job_update(self._lifecycle_job, update)

    async def on_bus_message(self, message: BusMessage) -> None:
        if message.target == self.name and isinstance(message, BusEndWorkerMessage):
            emit("end_requested", source=message.source, reason=message.reason)
        elif message.target == self.name and isinstance(message, BusCancelWorkerMessage):
            emit("cancel_requested", source=message.source, reason=message.reason)
        await super().on_bus_message(message)


async def main() -> int:
    args = base_parser(__doc__ or "").parse_args()
    setup_logging(args.log_level)

    runner = WorkerRunner(handle_sigint=True)
    worker = Worker(args.name, peer=args.peer)
    proxy = WebSocketProxyClient(
        f"{args.name}-proxy",
        url=hub_url(args, "pipecat"),
        serializer=serializer(args, "pipecat"),
        remote_worker_name=args.peer,
        local_worker_name=args.name,
        forward_messages=(BusFrameMessage,),
    )

    @proxy.event_handler("on_connected")
    async def on_connected(_worker: Any, _ws: Any) -> None:
        emit("connected")

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(_worker: Any, ws: Any) -> None:
        emit("disconnected", code=close_code(ws))

    @worker.event_handler("on_pipeline_started")
    async def on_pipeline_started(_worker: Any, _frame: Any) -> None:
        await worker.watch_workers(args.peer)
        # The proxy starts inactive; connect only once the pipeline runs.
        await worker.activate_worker(proxy.name)

    @worker.event_handler("on_pipeline_finished")
    async def on_pipeline_finished(_worker: Any, _frame: Any) -> None:
        emit("finished")
        await runner.end(reason="worker finished")

    await runner.add_workers(worker, proxy)
    await runner.run()
    emit("exit")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
