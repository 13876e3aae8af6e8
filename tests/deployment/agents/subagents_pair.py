"""A pipecat-ai-subagents client or worker for the load-balancer test (see ``_tasks.py``).

``--proxy reconnecting`` uses busclient's ReconnectingWebSocketProxyClientAgent,
``--proxy stock`` the library's WebSocketProxyClientAgent; both forward
``BusFrameMessage`` (the worker's bridged audio stream, ``--frames-per-second``).

Run: ``python -m tests.deployment.agents.subagents_pair --role worker --url ws://LB
--name w1 --peer c1`` and ``... --role client --name c1 --peer w1 --stop-file F``.
"""

import asyncio
import sys
from typing import Any

from pipecat.frames.frames import Frame
from pipecat.processors.frame_processor import FrameDirection
from pipecat_subagents.agents import BaseAgent, TaskGroupError, task
from pipecat_subagents.agents.proxy.websocket import WebSocketProxyClientAgent
from pipecat_subagents.bus import (
    BusFrameMessage,
    BusMessage,
    BusTaskRequestMessage,
    BusTaskResponseMessage,
)
from pipecat_subagents.runner import AgentRunner
from pipecat_subagents.types import AgentReadyData

from busclient.reconnecting import ReconnectPolicy
from busclient.reconnecting_subagents import ReconnectingWebSocketProxyClientAgent
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


class Worker(BaseAgent):
    def __init__(self, name: str, *, bus: Any, peer: str, args: Any) -> None:
        super().__init__(name, bus=bus)
        self._peer = peer
        self._args = args
        self._streaming = False
        self.state = WorkerState()

    async def on_ready(self) -> None:
        await super().on_ready()
        await self.watch_agent(self._peer)

    async def on_agent_ready(self, data: AgentReadyData) -> None:
        await super().on_agent_ready(data)
        if data.agent_name == self._peer:
            emit("peer_ready", runner=data.runner)
            if self._args.frames_per_second and not self._streaming:
                self._streaming = True
                self.create_asyncio_task(stream_frames(self._send_frame, self._args), "frames")

    async def _send_frame(self, frame: Frame) -> None:
        # No target: the proxy forwards it by source, the hub routes it to the peer.
        downstream = FrameDirection.DOWNSTREAM
        message = BusFrameMessage(source=self.name, frame=frame, direction=downstream)
        await self.send_message(message)

    @task(name=TASK_NAME)
    async def on_work(self, message: BusTaskRequestMessage) -> None:
        await self.send_task_response(message.task_id, self.state.handle(message.payload))


class Client(BaseAgent):
    def __init__(self, name: str, *, bus: Any, peer: str, loop: TaskLoop) -> None:
        super().__init__(name, bus=bus)
        self._peer = peer
        self.loop = loop

    async def on_ready(self) -> None:
        await super().on_ready()
        await self.watch_agent(self._peer)

    async def on_agent_ready(self, data: AgentReadyData) -> None:
        await super().on_agent_ready(data)
        if data.agent_name == self._peer:
            emit("peer_ready", runner=data.runner)
            self.loop.peer_ready.set()

    async def on_task_response(self, message: BusTaskResponseMessage) -> None:
        await super().on_task_response(message)
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
            await self.request_task(self._peer, name=TASK_NAME, payload={"key": key})
            return
        # request_task(..., timeout=T) without the wait: the group tells of the timeout.
        self.create_asyncio_task(self._ask_within(key, timeout), f"ask-{key}")

    async def _ask_within(self, key: str, timeout: float) -> None:
        try:
            group = await self.create_task_group_and_request_task(
                [self._peer], name=TASK_NAME, payload={"key": key}, timeout=timeout
            )
            await group.wait()
        except TaskGroupError as exc:
            self.loop.timeout(key, str(exc))


def make_proxy(args: Any, runner: AgentRunner) -> Any:
    options = {
        "bus": runner.bus,
        "url": hub_url(args, "subagents"),
        "remote_agent_name": args.peer,
        "local_agent_name": args.name,
        "forward_messages": (BusFrameMessage,),
    }
    if args.proxy == "stock":
        return WebSocketProxyClientAgent(f"{args.name}-proxy", **options)
    return ReconnectingWebSocketProxyClientAgent(f"{args.name}-proxy", policy=POLICY, **options)


async def main() -> int:
    parser = base_parser(__doc__ or "")
    add_arguments(parser)
    args = parser.parse_args()
    setup_logging(args.log_level)

    runner = AgentRunner(handle_sigint=True)
    proxy = make_proxy(args, runner)

    if args.role == "worker":
        worker = Worker(args.name, bus=runner.bus, peer=args.peer, args=args)
        attach_proxy_events(proxy)

        @worker.event_handler("on_ready")
        async def on_worker_ready(_agent: Any) -> None:
            worker.create_asyncio_task(report_stats_forever(proxy), "stats")
            await runner.add_agent(proxy)

        await runner.add_agent(worker)
        await runner.run()
        return 0

    loop = TaskLoop(args)
    client = Client(args.name, bus=runner.bus, peer=args.peer, loop=loop)
    attach_proxy_events(proxy, loop.gave_up.set)
    outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def scenario() -> None:
        try:
            outcome.set_result(await loop.run(client.ask))
        except Exception as exc:
            outcome.set_exception(exc)

    @client.event_handler("on_ready")
    async def on_client_ready(_agent: Any) -> None:
        client.create_asyncio_task(scenario(), "scenario")
        await runner.add_agent(proxy)

    await runner.add_agent(client)
    run = asyncio.ensure_future(runner.run())
    await asyncio.wait({run, outcome}, return_when=asyncio.FIRST_COMPLETED)
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
