"""A pipecat core (``pipecat.workers``) client behind the stock WebSocketProxyClient.

It watches its peer (``watch_workers``; ``on_worker_ready`` fires on every announcement
by a new runner), then runs the scenario named by ``--scenario`` (see ``_scenarios.py``)
and exits 0 when it passed. It is a ``PipelineWorker`` whose pipeline holds a
``BusBridgeProcessor``, the way a transport worker exchanges frames with a bridged worker.

Run: ``python -m tests.agents.pipecat_client --url ws://127.0.0.1:8765 --name client
--peer worker --scenario tasks``. Events are JSON lines on stdout.
"""

import asyncio
import sys
from typing import Any

from pipecat.bus import (
    BusBridgeProcessor,
    BusCancelWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    WorkerBus,
)
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame, TextFrame
from pipecat.pipeline.job_context import JobError, JobParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.registry.types import WorkerReadyData
from pipecat.workers.base_worker import WorkerActivationArgs
from pipecat.workers.proxy.websocket import WebSocketProxyClient
from pipecat.workers.runner import WorkerRunner

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


class Client(PipelineWorker):
    """Implements the scenario primitives with the pipecat workers API."""

    def __init__(
        self, name: str, *, bus: WorkerBus, peer: str, proxy_name: str, timeout: float
    ) -> None:
        self.state = ClientState(timeout)
        bridge = BusBridgeProcessor(bus=bus, worker_name=name)
        super().__init__(
            Pipeline([bridge, FrameCollector(self.state)]),
            name=name,
            enable_rtvi=False,
            idle_timeout_secs=None,
            enable_turn_tracking=False,
        )
        self.peer = peer
        self._proxy_name = proxy_name
        self._timeout = timeout

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        await super().on_worker_ready(data)
        if data.worker_name == self.peer:
            self.state.peer_ready(data.runner)

    async def on_job_response(
        self, message: BusJobResponseMessage | BusJobResponseUrgentMessage
    ) -> None:
        await super().on_job_response(message)
        self.state.response(message.job_id, str(message.status), message.response)

    # ClientOps

    async def run_task(
        self, name: str, payload: dict[str, Any], on_event: TaskEventHandler | None = None
    ) -> dict[str, Any]:
        params = JobParams(name=name, payload=payload, timeout=self._timeout)
        try:
            async with self.job(self.peer, params=params) as j:
                async for event in j:
                    if on_event is not None:
                        await on_event(event.type, event.data, j.job_id)
        except JobError as exc:
            raise TaskFailed(f"job {name}: {exc}") from exc
        return j.response

    async def fire_task(self, name: str, payload: dict[str, Any]) -> str:
        params = JobParams(name=name, payload=payload, timeout=self._timeout)
        return await self.request_job(self.peer, params=params)

    async def abort_task(self, task_id: str, reason: str) -> None:
        await self.cancel_job_group(task_id, reason=reason)

    async def request_update(self, task_id: str) -> None:
        await self.request_job_update(task_id, self.peer)

    async def deactivate_peer(self) -> None:
        await self.deactivate_worker(self.peer)

    async def activate_peer(self, metadata: dict[str, Any]) -> None:
        await self.activate_worker(self.peer, args=WorkerActivationArgs(metadata=metadata))

    async def end_peer(self, reason: str) -> None:
        message = BusEndWorkerMessage(source=self.name, target=self.peer, reason=reason)
        await self.send_bus_message(message)

    async def cancel_peer(self, reason: str) -> None:
        message = BusCancelWorkerMessage(source=self.name, target=self.peer, reason=reason)
        await self.send_bus_message(message)

    async def reactivate_proxy(self) -> None:
        # An active proxy activated again dials a second socket.
        await self.activate_worker(self._proxy_name)

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

    runner = WorkerRunner(handle_sigint=True)
    proxy_name = f"{args.name}-proxy"
    client = Client(
        args.name, bus=runner.bus, peer=args.peer, proxy_name=proxy_name, timeout=args.timeout
    )
    proxy = WebSocketProxyClient(
        proxy_name,
        url=hub_url(args, "pipecat"),
        serializer=serializer(args, "pipecat"),
        remote_worker_name=args.peer,
        local_worker_name=args.name,
        forward_messages=(BusFrameMessage,),
    )
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    @proxy.event_handler("on_connected")
    async def on_connected(_worker: Any, ws: Any) -> None:
        client.state.connected(ws)

    @proxy.event_handler("on_disconnected")
    async def on_disconnected(_worker: Any, ws: Any) -> None:
        client.state.disconnected(ws)

    async def scenario() -> None:
        outcome.set_result(await run_scenario(client, args))

    @client.event_handler("on_pipeline_started")
    async def on_pipeline_started(_worker: Any, _frame: Any) -> None:
        await client.watch_workers(args.peer)
        client.create_task(scenario(), "scenario")
        # The proxy starts inactive; connect only once the pipeline runs.
        await client.activate_worker(proxy_name)

    await runner.add_workers(client, proxy)
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
