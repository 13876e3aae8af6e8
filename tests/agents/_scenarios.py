"""Client scenarios, written once for both dialects.

Each dialect's client program implements the small set of primitives in `ClientOps` with
its own library's public API (``self.task``/``self.job``, ``activate_agent``/
``activate_worker``...); the scenarios here only orchestrate them and check what comes back.
A scenario raises `ScenarioError` when something is wrong; `run_scenario` turns the outcome
into the final ``done`` event.
"""

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tests.agents._common import AUDIO_SAMPLE_RATE, audio_chunk, close_code, digest, emit

SCENARIOS = (
    "tasks",
    "stream",
    "cancel",
    "lifecycle",
    "end",
    "cancel-agent",
    "frames",
    "restart",
    "takeover",
    "peer-lost",
)

# Called with (event type, event data, task id) for each intermediate event of a task:
# "update", "stream_start", "stream_data", "stream_end" (the same in both libraries).
TaskEventHandler = Callable[[str, dict[str, Any] | None, str], Awaitable[None]]


class ScenarioError(Exception):
    """A scenario saw something other than what it expected."""


class TaskFailed(ScenarioError):
    """The library raised its task/job error (timeout, cancellation, worker error)."""


def check(condition: bool, message: str) -> None:
    """Raise `ScenarioError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ScenarioError(message)


class Changed:
    """Wakes every waiter whenever some recorded state changes; waiters re-check."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, predicate: Callable[[], bool], within: float, what: str) -> None:
        async def wait() -> None:
            while not predicate():
                await self._event.wait()

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise ScenarioError(f"timed out after {within:.1f}s waiting for {what}") from None


class ClientState:
    """What a client has observed: peer readiness, responses, frames, sockets."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.changed = Changed()
        self.readies: list[str] = []
        self._readies_taken = 0
        self.responses: dict[str, tuple[str, dict[str, Any] | None]] = {}
        self.audio: list[tuple[str, bytes, int, int]] = []
        self.texts: list[str] = []
        self.connections: list[Any] = []
        self.disconnects: list[int | None] = []

    # Recording, called from the clients' hooks and event handlers.

    def peer_ready(self, runner: str) -> None:
        self.readies.append(runner)
        emit("ready", runner=runner, n=len(self.readies))
        self.changed.notify()

    def response(self, task_id: str, status: str, response: dict[str, Any] | None) -> None:
        self.responses[task_id] = (status, response)
        self.changed.notify()

    def audio_frame(self, kind: str, audio: bytes, sample_rate: int, num_channels: int) -> None:
        self.audio.append((kind, audio, sample_rate, num_channels))
        self.changed.notify()

    def text_frame(self, text: str) -> None:
        self.texts.append(text)
        self.changed.notify()

    def connected(self, ws: Any) -> None:
        self.connections.append(ws)
        emit("connected", n=len(self.connections))
        self.changed.notify()

    def disconnected(self, ws: Any) -> None:
        code = close_code(ws)
        self.disconnects.append(code)
        emit("disconnected", code=code, n=len(self.disconnects))
        self.changed.notify()

    # Waiting.

    async def next_ready(self) -> str:
        """The runner name of the next announcement of the peer not yet consumed."""
        index = self._readies_taken
        await self.changed.until(lambda: len(self.readies) > index, self.timeout, "peer ready")
        self._readies_taken += 1
        return self.readies[index]

    async def wait_response(self, task_id: str) -> tuple[str, dict[str, Any] | None]:
        await self.changed.until(
            lambda: task_id in self.responses, self.timeout, f"response to {task_id}"
        )
        return self.responses[task_id]

    async def wait_disconnected(self, count: int = 1, within: float | None = None) -> None:
        await self.changed.until(
            lambda: len(self.disconnects) >= count,
            within if within is not None else self.timeout,
            f"disconnect #{count}",
        )


class ClientOps(Protocol):
    """The primitives each dialect's client implements with its own library."""

    state: ClientState
    peer: str

    async def run_task(
        self, name: str, payload: dict[str, Any], on_event: TaskEventHandler | None = None
    ) -> dict[str, Any]:
        """Run one task/job to completion, feeding intermediate events to ``on_event``.

        Raises:
            TaskFailed: the library reported the task as failed, timed out or cancelled.
        """

    async def fire_task(self, name: str, payload: dict[str, Any]) -> str:
        """Send a task/job request without waiting; returns its id."""

    async def abort_task(self, task_id: str, reason: str) -> None: ...

    async def request_update(self, task_id: str) -> None: ...

    async def deactivate_peer(self) -> None: ...

    async def activate_peer(self, metadata: dict[str, Any]) -> None: ...

    async def end_peer(self, reason: str) -> None: ...

    async def cancel_peer(self, reason: str) -> None: ...

    async def reactivate_proxy(self) -> None: ...

    async def send_audio(self, chunk: bytes) -> None: ...

    async def send_text(self, text: str) -> None: ...


# Building blocks.


async def sequential_echo(c: ClientOps, count: int, phase: int) -> tuple[list[int], int]:
    """``count`` echo round trips, one after the other; returns counters and worker pid."""
    counters: list[int] = []
    pid = -1
    for i in range(count):
        response = await c.run_task("echo", {"i": i, "phase": phase})
        check(
            response.get("echo") == {"i": i, "phase": phase},
            f"echo {i}: payload came back as {response.get('echo')!r}",
        )
        counters.append(response["counter"])
        pid = response["pid"]
        emit("task_result", i=i, phase=phase, counter=response["counter"], pid=pid)
    first = counters[0]
    check(
        counters == list(range(first, first + count)),
        f"worker counters not consecutive (order or duplicates): {counters}",
    )
    return counters, pid


async def burst_echo(c: ClientOps, count: int) -> list[int]:
    """``count`` requests sent back to back before any answer; checks arrival order."""
    ids = [await c.fire_task("echo", {"i": i, "burst": True}) for i in range(count)]
    counters: list[int] = []
    for i, task_id in enumerate(ids):
        status, response = await c.state.wait_response(task_id)
        check(status == "completed", f"burst {i}: status {status}")
        check(response is not None and response["echo"]["i"] == i, f"burst {i}: {response!r}")
        assert response is not None
        counters.append(response["counter"])
    first = counters[0]
    check(
        counters == list(range(first, first + count)),
        f"burst reached the worker out of order: {counters}",
    )
    emit("burst_result", count=count, first=first, last=counters[-1])
    return counters


# Scenarios.


async def scenario_tasks(c: ClientOps, args: argparse.Namespace) -> None:
    await c.state.next_ready()
    counters, _ = await sequential_echo(c, args.count, phase=0)
    burst = await burst_echo(c, args.count)
    check(burst[0] == counters[-1] + 1, f"burst counters {burst[0]} after {counters[-1]}")


async def scenario_stream(c: ClientOps, args: argparse.Namespace) -> None:
    await c.state.next_ready()
    chunks = args.count
    seen: list[tuple[str, dict[str, Any] | None]] = []

    async def on_stream_event(kind: str, data: dict[str, Any] | None, _task_id: str) -> None:
        seen.append((kind, data))
        emit("stream_event", type=kind, data=data)

    response = await c.run_task("stream", {"chunks": chunks}, on_stream_event)
    expected = [
        ("update", {"progress": 0}),
        ("stream_start", {"chunks": chunks}),
        *[("stream_data", {"seq": i, "text": f"part-{i}"}) for i in range(chunks)],
        ("stream_end", {"chunks": chunks}),
    ]
    check(seen == expected, f"stream events {seen!r} != {expected!r}")
    check(response == {"chunks": chunks}, f"stream response {response!r}")

    # Updates asked for by the requester, answered one by one.
    wanted = 3
    updates: list[dict[str, Any] | None] = []

    async def on_progress_event(kind: str, data: dict[str, Any] | None, task_id: str) -> None:
        check(kind == "update", f"progress task sent {kind}")
        updates.append(data)
        emit("progress_update", data=data)
        await c.request_update(task_id)

    response = await c.run_task("progress", {"requests": wanted}, on_progress_event)
    check(
        updates == [{"requested": i} for i in range(wanted)],
        f"progress updates {updates!r}",
    )
    check(response == {"requests": wanted}, f"progress response {response!r}")


async def scenario_cancel(c: ClientOps, args: argparse.Namespace) -> None:
    await c.state.next_ready()
    cancelled: list[str] = []

    async def on_slow_event(kind: str, data: dict[str, Any] | None, task_id: str) -> None:
        if kind == "update" and data == {"state": "started"} and not cancelled:
            cancelled.append(task_id)
            emit("cancelling", task_id=task_id)
            await c.abort_task(task_id, "client-cancel")

    try:
        response = await c.run_task("slow", {}, on_slow_event)
    except TaskFailed as exc:
        check("client-cancel" in str(exc), f"task failed for another reason: {exc}")
    else:
        raise ScenarioError(f"slow task completed instead of being cancelled: {response!r}")
    check(len(cancelled) == 1, "the worker never reported the slow task as started")
    # The worker answers a cancel with a response of status "cancelled".
    status, _ = await c.state.wait_response(cancelled[0])
    check(status == "cancelled", f"cancelled task answered with status {status}")
    emit("cancel_confirmed", task_id=cancelled[0])
    # And it still does work afterwards.
    await sequential_echo(c, 1, phase=1)


async def scenario_lifecycle(c: ClientOps, args: argparse.Namespace) -> None:
    await c.state.next_ready()
    status = await c.run_task("status", {})
    check(status["active"] is True, f"peer not active at start: {status!r}")
    for rnd in range(args.rounds):
        metadata = {"round": rnd}

        async def on_lifecycle_event(
            kind: str, data: dict[str, Any] | None, _task_id: str, metadata: dict = metadata
        ) -> None:
            state = (data or {}).get("state")
            if state == "watching":
                await c.deactivate_peer()
            elif state == "deactivated":
                check(data == {"state": "deactivated", "active": False}, f"{data!r}")
                emit("peer_deactivated", round=metadata["round"])
                await c.activate_peer(metadata)

        response = await c.run_task("lifecycle", {}, on_lifecycle_event)
        check(
            response == {"state": "activated", "active": True, "args": {"metadata": metadata}},
            f"activation answered with {response!r}",
        )
        emit("peer_activated", round=rnd, args=response["args"])
        status = await c.run_task("status", {})
        check(
            status["active"] is True and status["args"] == {"metadata": metadata},
            f"status after activation {status!r}",
        )


async def scenario_end(c: ClientOps, args: argparse.Namespace) -> None:
    await c.state.next_ready()
    await sequential_echo(c, 1, phase=0)
    if args.scenario == "end":
        await c.end_peer("client-end")
    else:
        await c.cancel_peer("client-cancel")
    emit("sent", scenario=args.scenario)
    # The peer winds down and leaves; the hub tells us once its grace period is over.
    await c.state.wait_disconnected()


async def scenario_frames(c: ClientOps, args: argparse.Namespace) -> None:
    await c.state.next_ready()
    sent = [audio_chunk(i) for i in range(args.count)]
    texts = [f"hello-{i}" for i in range(args.count)]
    for chunk in sent:
        await c.send_audio(chunk)
    for text in texts:
        await c.send_text(text)
    state = c.state
    await state.changed.until(
        lambda: len(state.audio) >= len(sent) and len(state.texts) >= len(texts),
        state.timeout,
        f"{len(sent)} audio and {len(texts)} text frames back "
        f"(have {len(state.audio)} and {len(state.texts)})",
    )
    kinds = {kind for kind, _, _, _ in state.audio}
    formats = {(rate, channels) for _, _, rate, channels in state.audio}
    received = [audio for _, audio, _, _ in state.audio]
    check(kinds == {"OutputAudioRawFrame"}, f"audio came back as {kinds}")
    check(formats == {(AUDIO_SAMPLE_RATE, 1)}, f"audio format came back as {formats}")
    check(len(received) == len(sent), f"{len(received)} audio frames for {len(sent)} sent")
    bad = [i for i, (a, b) in enumerate(zip(sent, received, strict=True)) if a != b]
    check(not bad, f"audio chunks changed or reordered at indexes {bad[:10]}")
    check(state.texts == [f"echo:{t}" for t in texts], f"texts came back as {state.texts!r}")
    emit(
        "frames_result",
        audio=len(received),
        text=len(state.texts),
        sent_digest=digest(sent),
        received_digest=digest(received),
    )


async def scenario_restart(c: ClientOps, args: argparse.Namespace) -> None:
    runners: list[str] = []
    pids: list[int] = []
    for phase in range(args.phases):
        runner = await c.state.next_ready()
        check(runner not in runners, f"runner {runner} announced twice")
        counters, pid = await sequential_echo(c, args.count, phase)
        check(counters[0] == 1, f"phase {phase} did not start on a fresh worker: {counters}")
        check(pid not in pids, f"phase {phase} answered by the old worker process {pid}")
        runners.append(runner)
        pids.append(pid)
        emit("phase_done", phase=phase, runner=runner, pid=pid)
    check(not c.state.disconnects, f"client disconnected: {c.state.disconnects}")


async def scenario_takeover(c: ClientOps, args: argparse.Namespace) -> None:
    state = c.state
    await state.next_ready()
    counters, pid = await sequential_echo(c, args.count, phase=0)
    emit("phase_done", phase=0)
    await c.reactivate_proxy()
    await state.changed.until(lambda: len(state.connections) >= 2, state.timeout, "2nd socket")
    old, new = state.connections[0], state.connections[1]
    try:
        await asyncio.wait_for(old.wait_closed(), state.timeout)
    except TimeoutError:
        raise ScenarioError("the hub did not close the older socket") from None
    code = close_code(old)
    emit("old_socket_closed", code=code)
    if code not in (1000, 1001):
        # The proxy reports such a close as a disconnect; let it finish doing so before
        # checking that the newer socket still carries traffic.
        await state.wait_disconnected()
    more, pid_after = await sequential_echo(c, args.count, phase=1)
    check(pid_after == pid, "a different worker answered after the takeover")
    check(more[0] == counters[-1] + 1, f"counters {counters} then {more}")
    check(close_code(new) is None, f"the newer socket closed too ({close_code(new)})")
    check(len(state.readies) == 1, f"peer announced again on reconnect: {state.readies}")


async def scenario_peer_lost(c: ClientOps, args: argparse.Namespace) -> None:
    await c.state.next_ready()
    await sequential_echo(c, 1, phase=0)
    emit("phase_done", phase=0)
    await c.state.wait_disconnected(within=c.state.timeout * 4)


_RUNNERS: dict[str, Callable[[ClientOps, argparse.Namespace], Awaitable[None]]] = {
    "tasks": scenario_tasks,
    "stream": scenario_stream,
    "cancel": scenario_cancel,
    "lifecycle": scenario_lifecycle,
    "end": scenario_end,
    "cancel-agent": scenario_end,
    "frames": scenario_frames,
    "restart": scenario_restart,
    "takeover": scenario_takeover,
    "peer-lost": scenario_peer_lost,
}


async def run_scenario(c: ClientOps, args: argparse.Namespace) -> bool:
    """Run the chosen scenario and report ``done``; returns whether it passed."""
    emit("scenario", name=args.scenario)
    try:
        await _RUNNERS[args.scenario](c, args)
    except ScenarioError as exc:
        emit("done", ok=False, error=str(exc))
        return False
    except Exception as exc:
        emit("done", ok=False, error=f"{type(exc).__name__}: {exc}")
        return False
    emit("done", ok=True)
    return True


def add_scenario_args(parser: argparse.ArgumentParser) -> None:
    """Scenario arguments shared by both clients."""
    parser.add_argument("--scenario", required=True, choices=SCENARIOS)
    parser.add_argument("--count", type=int, default=20, help="round trips / chunks / frames")
    parser.add_argument("--rounds", type=int, default=2, help="lifecycle rounds")
    parser.add_argument("--phases", type=int, default=2, help="restart phases")
