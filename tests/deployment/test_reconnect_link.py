"""The reconnecting link against a real WebSocket server that closes, drops and refuses
as scripted: what it retries, what it gives up on, what it buffers, and that it never
holds two sockets."""

import asyncio
import random
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from busclient.reconnecting import (
    Disconnect,
    OutboundBuffer,
    ReconnectingLink,
    ReconnectPolicy,
)
from tests.deployment.scripted_server import SERVE, ScriptedServer, close, drop, refuse

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.1, jitter=0.0, max_elapsed=5.0)


class Recorder:
    """The hooks of a proxy, recording every event in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.frames: list[bytes | str] = []
        self._changed = asyncio.Event()

    def _add(self, name: str, detail: Any) -> None:
        self.events.append((name, detail))
        self._changed.set()
        self._changed = asyncio.Event()

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not predicate():
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def link_connected(self, websocket: ClientConnection, first: bool, attempts: int) -> None:
        self._add("connected" if first else "reconnected", attempts)

    async def link_frame(self, data: bytes | str) -> None:
        self.frames.append(data)
        self._add("frame", data)

    async def link_reconnecting(self, disconnect: Disconnect, attempt: int, delay: float) -> None:
        self._add("reconnecting", disconnect)

    async def link_gave_up(
        self, websocket: ClientConnection | None, disconnect: Disconnect, reason: str
    ) -> None:
        self._add("gave_up", (websocket, disconnect, reason))


async def run_link(
    server: ScriptedServer, policy: ReconnectPolicy = FAST, **kwargs: Any
) -> tuple[ReconnectingLink, Recorder, "asyncio.Task[None]"]:
    hooks = Recorder()
    link = ReconnectingLink(server.url, hooks, policy=policy, rng=random.Random(0), **kwargs)
    task = asyncio.create_task(link.run())
    return link, hooks, task


async def stop(link: ReconnectingLink, task: "asyncio.Task[None]") -> None:
    await link.close()
    await asyncio.wait_for(task, 5)


@pytest.mark.parametrize(
    "step",
    [
        close(1012, after=0.05),
        close(1013, after=0.05),
        close(1011, after=0.05),
        # 1000/1001 end the receive loop without an exception (the stock proxy does not
        # notice them until its next send): still an end to recover from.
        close(1000, after=0.05),
        close(1001, after=0.05),
        close(4008, after=0.05),
        drop(after=0.05),
        refuse(503),
        refuse(502),
    ],
    ids=lambda s: f"{s.kind}-{s.value}" if s.value else s.kind,
)
async def test_recovers_from(step: Any) -> None:
    async with ScriptedServer([step, SERVE]) as server:
        link, hooks, task = await run_link(server)
        await hooks.until(lambda: link.connected and server.handshakes == 2)
        assert "gave_up" not in hooks.names()
        [(_, disconnect)] = [e for e in hooks.events if e[0] == "reconnecting"]
        if step.kind == "refuse":
            assert hooks.names() == ["reconnecting", "connected"]
            assert disconnect.status == step.value
        else:
            assert hooks.names() == ["connected", "reconnecting", "reconnected"]
            assert disconnect.code == (step.value if step.kind == "close" else 1006)
        assert server.most_open == 1
        await stop(link, task)
        assert link.stats.connects == 1 + (step.kind != "refuse")


@pytest.mark.parametrize(
    "step",
    [close(4001), close(4002), close(1008), close(1007), refuse(401), refuse(403)],
    ids=lambda s: f"{s.kind}-{s.value}",
)
async def test_gives_up_at_once_on(step: Any) -> None:
    async with ScriptedServer([step, SERVE]) as server:
        link, hooks, task = await run_link(server)
        await asyncio.wait_for(task, 5)  # run() returns after giving up
        assert hooks.names()[-1] == "gave_up"
        assert "reconnecting" not in hooks.names()
        websocket, disconnect, reason = hooks.events[-1][1]
        assert reason.startswith("refused")
        if step.kind == "refuse":
            assert websocket is None and disconnect.status == step.value
        else:
            assert websocket is not None and websocket.close_code == step.value
        assert server.handshakes == 1
        assert link.stats.gave_up == reason and not link.running


async def test_gives_up_after_the_attempt_limit() -> None:
    policy = ReconnectPolicy(initial_delay=0.01, max_delay=0.02, max_attempts=3)
    async with ScriptedServer([refuse(503)] * 10) as server:
        _link, hooks, task = await run_link(server, policy)
        await asyncio.wait_for(task, 5)
        assert hooks.names() == ["reconnecting"] * 3 + ["gave_up"]
        assert server.handshakes == 4
        assert "3 attempts" in hooks.events[-1][1][2]


async def test_gives_up_after_the_time_limit() -> None:
    policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.05, jitter=0, max_elapsed=0.3)
    async with ScriptedServer([refuse(503)] * 100) as server:
        _link, hooks, task = await run_link(server, policy)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(task, 5)
        assert asyncio.get_running_loop().time() - started < 2
        assert hooks.names()[-1] == "gave_up" and "gave up after" in hooks.events[-1][1][2]


async def test_a_flapping_node_does_not_reset_the_outage() -> None:
    """Accepted and closed at once, again and again: the attempts keep counting."""
    policy = ReconnectPolicy(initial_delay=0.01, max_delay=0.02, max_attempts=4, stable_after=5)
    async with ScriptedServer([close(1013)] * 10) as server:
        _link, hooks, task = await run_link(server, policy)
        await asyncio.wait_for(task, 5)
        assert hooks.names().count("reconnecting") == 4 and hooks.names()[-1] == "gave_up"


async def test_messages_sent_while_disconnected_are_flushed_in_order() -> None:
    policy = ReconnectPolicy(initial_delay=0.3, max_delay=0.3, jitter=0)
    async with ScriptedServer([close(1012, receive=2), SERVE]) as server:
        link, hooks, task = await run_link(server, policy)
        await hooks.until(lambda: link.connected)
        await link.send(b"m0")
        await link.send(b"m1")
        await hooks.until(lambda: "reconnecting" in hooks.names())
        assert not link.connected
        for i in range(2, 6):
            await link.send(b"m%d" % i)  # into the buffer: the socket is gone
        assert link.stats.buffered == 4
        await hooks.until(lambda: "reconnected" in hooks.names())
        await server.until(lambda: len(server.received) == 6)
        assert server.received == [b"m%d" % i for i in range(6)]
        assert link.stats.flushed == 4 and link.stats.sent == 2 and link.stats.buffered == 0
        await link.send(b"m6")  # straight through again
        await server.until(lambda: len(server.received) == 7)
        assert server.most_open == 1
        await stop(link, task)


async def test_buffer_overflow_drops_the_oldest_and_counts() -> None:
    policy = ReconnectPolicy(initial_delay=0.3, max_delay=0.3, jitter=0)
    async with ScriptedServer([close(1012), SERVE]) as server:
        link, hooks, task = await run_link(server, policy, buffer=OutboundBuffer(max_messages=3))
        await hooks.until(lambda: "reconnecting" in hooks.names())
        for i in range(5):
            await link.send(b"m%d" % i)
        assert link.stats.overflowed == 2
        await server.until(lambda: len(server.received) == 3)
        assert server.received == [b"m2", b"m3", b"m4"]
        await stop(link, task)


async def test_frames_reach_the_hooks_across_reconnects() -> None:
    async with ScriptedServer([close(1012, after=0.2), SERVE]) as server:
        link, hooks, task = await run_link(server)
        await hooks.until(lambda: link.connected)
        await server.send_all(b"first")
        await hooks.until(lambda: "reconnected" in hooks.names())
        await server.until(lambda: server.open_now == 1)
        await server.send_all(b"second")
        await hooks.until(lambda: len(hooks.frames) == 2)
        assert hooks.frames == [b"first", b"second"]
        await stop(link, task)


async def test_close_stops_a_backoff_at_once_and_later_sends_are_counted() -> None:
    policy = ReconnectPolicy(initial_delay=30, max_delay=30, jitter=0)
    async with ScriptedServer([close(1012)]) as server:
        link, hooks, task = await run_link(server, policy)
        await hooks.until(lambda: "reconnecting" in hooks.names())
        await link.send(b"held")
        await stop(link, task)  # well before the 30 s backoff ends
        assert "gave_up" not in hooks.names()
        await link.send(b"late")
        assert link.stats.dropped_stopped == 2  # the held one and the late one
        assert server.handshakes == 1


async def test_close_while_connected_is_not_a_disconnect() -> None:
    async with ScriptedServer([SERVE]) as server:
        link, hooks, task = await run_link(server)
        await hooks.until(lambda: link.connected)
        await stop(link, task)
        assert hooks.names() == ["connected"]
        await server.until(lambda: server.open_now == 0)
        assert server.handshakes == 1


async def test_cancelling_the_supervisor_leaves_no_socket() -> None:
    async with ScriptedServer([SERVE]) as server:
        link, hooks, task = await run_link(server)
        await hooks.until(lambda: link.connected)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.until(lambda: server.open_now == 0)


async def test_retry_now_cuts_a_backoff_short() -> None:
    policy = ReconnectPolicy(initial_delay=30, max_delay=30, jitter=0)
    async with ScriptedServer([close(1012), SERVE]) as server:
        link, hooks, task = await run_link(server, policy)
        await hooks.until(lambda: "reconnecting" in hooks.names())
        link.retry_now()
        await hooks.until(lambda: link.connected, timeout=3)
        assert server.most_open == 1
        await stop(link, task)


async def test_cancelling_the_supervisor_as_retry_now_wakes_it_ends_it() -> None:
    policy = ReconnectPolicy(initial_delay=30, max_delay=30, jitter=0)
    async with ScriptedServer([close(1012), SERVE]) as server:
        link, hooks, task = await run_link(server, policy)
        await hooks.until(lambda: "reconnecting" in hooks.names())
        link.retry_now()
        task.cancel()  # in the same turn: the wake-up must not swallow the cancel
        done, _ = await asyncio.wait([task], timeout=5)
        assert task in done and task.cancelled()
        assert server.handshakes == 1  # it did not dial again


async def test_run_twice_at_once_is_refused() -> None:
    async with ScriptedServer([SERVE]) as server:
        link, hooks, task = await run_link(server)
        await hooks.until(lambda: link.connected)
        with pytest.raises(RuntimeError, match="already running"):
            await link.run()
        assert server.most_open == 1
        await stop(link, task)


async def test_messages_sent_between_start_and_the_first_socket_are_held() -> None:
    """The proxies call start() on activation, before the supervisor task first runs."""
    async with ScriptedServer([refuse(503), SERVE]) as server:
        hooks = Recorder()
        link = ReconnectingLink(server.url, hooks, policy=FAST)
        await link.send(b"too early")  # not started: dropped, as the stock proxy does
        link.start()
        await link.send(b"a")
        await link.send(b"b")
        task = asyncio.create_task(link.run())
        await server.until(lambda: len(server.received) == 2)
        assert server.received == [b"a", b"b"]
        assert link.stats.dropped_stopped == 1 and link.stats.flushed == 2
        await stop(link, task)
