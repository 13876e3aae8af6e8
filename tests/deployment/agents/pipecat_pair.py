"""A pipecat core (``pipecat.workers``) client or worker for the load-balancer test
(see ``_tasks.py``).

``--proxy reconnecting`` uses busclient's ReconnectingWebSocketProxyClient,
``--proxy stock`` pipecat's WebSocketProxyClient; both forward ``BusFrameMessage``
(the worker's bridged audio stream, ``--frames-per-second``).

Run: ``python -m tests.deployment.agents.pipecat_pair --role worker --url ws://LB
--name w1 --peer c1`` and ``... --role client --name c1 --peer w1 --stop-file F``.
"""

import asyncio
import sys
from typing import Any

from pipecat.bus import (
    BusFrameMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusJobResponseUrgentMessage,
    BusMessage,
)
from pipecat.frames.frames import Frame
from pipecat.pipeline.job_context import JobGroupError, JobGroupParams, JobParams
from pipecat.pipeline.job_decorator import job
from pipecat.processors.frame_processor import FrameDirection
from pipecat.registry.types import WorkerReadyData
from pipecat.workers.base_worker import BaseWorker
from pipecat.workers.proxy.websocket import WebSocketProxyClient
from pipecat.workers.runner import WorkerRunner

from busclient.reconnecting import ReconnectPolicy
from busclient.reconnecting_pipecat import ReconnectingWebSocketProxyClient
from tests.agents._common import base_parser, emit, hub_url, setup_logging
from tests.deployment.agents._tasks import (
    TASK_NAME,
    TaskLoop,
    WorkerState,
    add_arguments,
    attach_proxy_events,
    proxy_stats,
    report_stats_forever,
    stream_frames,
)

POLICY = ReconnectPolicy(initial_delay=0.2, max_delay=2.0, jitter=0.5, max_elapsed=30.0)


class Worker(BaseWorker):
    def __init__(self, name: str, *, peer: str, proxy: Any, args: Any) -> None:
        super().__init__(name)
        self._peer = peer
        self._proxy = proxy
        self._args = args
        self._streaming = False
        self.state = WorkerState()

    async def on_activated(self, args: dict | None) -> None:
        await super().on_activated(args)
        await self.watch_workers(self._peer)
        self.create_task(report_stats_forever(self._proxy), "stats")
        await self.activate_worker(self._proxy.name)

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        await super().on_worker_ready(data)
        if data.worker_name == self._peer:
            emit("peer_ready", runner=data.runner)
            if self._args.frames_per_second and not self._streaming:
                self._streaming = True
                self.create_task(stream_frames(self._send_frame, self._args), "frames")

    async def _send_frame(self, frame: Frame) -> None:
        # No target: the proxy forwards it by source, the hub routes it to the peer.
        downstream = FrameDirection.DOWNSTREAM
        message = BusFrameMessage(source=self.name, frame=frame, direction=downstream)
        await self.send_bus_message(message)

    @job(name=TASK_NAME)
    async def on_work(self, message: BusJobRequestMessage) -> None:
        await self.send_job_response(message.job_id, self.state.handle(message.payload))


class Client(BaseWorker):
    def __init__(self, name: str, *, peer: str, proxy: Any, loop: TaskLoop) -> None:
        super().__init__(name)
        self._peer = peer
        self._proxy = proxy
        self.loop = loop
        self.outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def on_activated(self, args: dict | None) -> None:
        await super().on_activated(args)
        await self.watch_workers(self._peer)
        self.create_task(self._scenario(), "scenario")
        await self.activate_worker(self._proxy.name)

    async def _scenario(self) -> None:
        try:
            self.outcome.set_result(await self.loop.run(self.ask))
        except Exception as exc:
            self.outcome.set_exception(exc)

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        await super().on_worker_ready(data)
        if data.worker_name == self._peer:
            emit("peer_ready", runner=data.runner)
            self.loop.peer_ready.set()

    async def on_job_response(
        self, message: BusJobResponseMessage | BusJobResponseUrgentMessage
    ) -> None:
        await super().on_job_response(message)
        self.loop.answer(message.response)

    async def on_bus_message(self, message: BusMessage) -> None:
        if (
            isinstance(message, BusFrameMessage)
            and message.source == self._peer
            and self.loop.frames is not None
        ):
            self.loop.frames.take(message.frame)
        await super().on_bus_message(message)

    async def ask(self, key: str) -> None:
        timeout = self.loop.args.task_timeout or None
        if timeout is None:
            params = JobParams(name=TASK_NAME, payload={"key": key})
            await self.request_job(self._peer, params=params)
            return
        # request_job(..., JobParams(timeout=T)) without the wait: the group tells of it.
        self.create_task(self._ask_within(key, timeout), f"ask-{key}")

    async def _ask_within(self, key: str, timeout: float) -> None:
        params = JobGroupParams(name=TASK_NAME, payload={"key": key}, timeout=timeout)
        try:
            group = await self.create_job_group_and_request_job([self._peer], params=params)
            await group.wait()
        except JobGroupError as exc:
            self.loop.timeout(key, str(exc))


def make_proxy(args: Any) -> Any:
    options = {
        "url": hub_url(args, "pipecat"),
        "remote_worker_name": args.peer,
        "local_worker_name": args.name,
        "forward_messages": (BusFrameMessage,),
    }
    if args.proxy == "stock":
        return WebSocketProxyClient(f"{args.name}-proxy", **options)
    return ReconnectingWebSocketProxyClient(f"{args.name}-proxy", policy=POLICY, **options)


async def main() -> int:
    parser = base_parser(__doc__ or "")
    add_arguments(parser)
    args = parser.parse_args()
    setup_logging(args.log_level)

    runner = WorkerRunner(handle_sigint=True)
    proxy = make_proxy(args)

    if args.role == "worker":
        attach_proxy_events(proxy)
        await runner.add_workers(Worker(args.name, peer=args.peer, proxy=proxy, args=args), proxy)
        await runner.run()
        return 0

    loop = TaskLoop(args)
    client = Client(args.name, peer=args.peer, proxy=proxy, loop=loop)
    attach_proxy_events(proxy, loop.gave_up.set)
    await runner.add_workers(client, proxy)
    run = asyncio.ensure_future(runner.run())
    await asyncio.wait({run, client.outcome}, return_when=asyncio.FIRST_COMPLETED)
    outcome = client.outcome
    if outcome.done() and outcome.exception() is None:
        emit("done", ok=True, **outcome.result(), stats=proxy_stats(proxy))
    else:
        error = outcome.exception() if outcome.done() else "runner ended first"
        emit("done", ok=False, error=repr(error), stats=proxy_stats(proxy))
    if not run.done():
        await runner.cancel(reason="scenario over")
        try:
            await asyncio.wait_for(run, args.timeout)
        except TimeoutError:
            emit("shutdown_timeout")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
