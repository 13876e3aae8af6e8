"""The listener's loop on stand-in connections: no connection while there is nothing
to hear; the snapshot written and the connection made current together, so a
channel subscribed at any moment is on the live connection or the next one's
snapshot; up reported once Redis has confirmed, down on every failure, with a
doubling backoff that a success resets; and refusals logged apart from outages."""

import asyncio
import logging
from collections.abc import Collection

import pytest
from redis.exceptions import NoPermissionError

from bushub.broker import listener as listener_module
from bushub.broker.listener import Listener
from bushub.broker.respconn import ReplyError
from tests.unit.bushub.helpers import wait_until


class FakeLink:
    """A connection that records what it is told, confirms when let, and ends when
    told to."""

    def __init__(self) -> None:
        self.on_message = lambda channel, data: None
        self.on_refused = None
        self.reads = 0
        self.writes: list[tuple[str, tuple[str, ...]]] = []
        self.confirm = asyncio.Event()
        self.confirm.set()
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def subscribe(self, channels: Collection[str]) -> None:
        self.writes.append(("+", tuple(sorted(channels))))

    def unsubscribe(self, channels: Collection[str]) -> None:
        self.writes.append(("-", tuple(sorted(channels))))

    async def ping(self) -> None:
        await self.confirm.wait()

    async def serve(self) -> None:
        await self.ended
        raise ConnectionError("pub/sub connection lost: closed by redis")

    async def aclose(self) -> None:
        self.closed = True

    def end(self) -> None:
        self.ended.set_result(None)


class Harness:
    """A listener whose connect() hands out the links (or errors) queued here."""

    def __init__(self) -> None:
        self.outcomes: asyncio.Queue[FakeLink | BaseException] = asyncio.Queue()
        self.events: list[object] = []
        self.listener = Listener(
            "redis",
            self.connect,
            on_up=self.up,
            on_down=lambda exc: self.events.append(type(exc).__name__),
            backoff_max=0.2,
        )

    async def connect(self) -> FakeLink:
        outcome = await self.outcomes.get()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def up(self, again: bool) -> None:
        self.events.append(("up", again))

    def link(self) -> FakeLink:
        link = FakeLink()
        self.outcomes.put_nowait(link)
        return link


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Back off for no time at all (the delays still show in the log lines)."""
    monkeypatch.setattr(listener_module.random, "uniform", lambda a, b: 0.0)


def delays(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m.rsplit(" ", 1)[1] for m in caplog.messages if "retrying in" in m]


async def test_no_connection_until_a_channel_is_wanted() -> None:
    h = Harness()
    task = asyncio.create_task(h.listener.run())
    await asyncio.sleep(0.01)
    assert h.outcomes.qsize() == 0 and h.events == []  # never asked to connect
    link = h.link()
    h.listener.subscribe({"a"})
    await wait_until(lambda: h.events == [("up", False)], "the first connection up")
    assert link.writes == [("+", ("a",))]
    assert h.listener.link is link
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert link.closed and h.listener.link is None


async def test_every_channel_is_on_the_live_connection_or_in_the_next_snapshot() -> None:
    h = Harness()
    h.listener.subscribe({"a", "b"})
    first = h.link()
    first.confirm.clear()  # Redis has not confirmed yet
    task = asyncio.create_task(h.listener.run())
    await wait_until(lambda: h.listener.link is first, "the connection to be current")
    # Current before it is confirmed: changes meanwhile are written on it.
    h.listener.subscribe({"c", "a"})
    h.listener.unsubscribe({"b", "z"})
    assert first.writes == [("+", ("a", "b")), ("+", ("c",)), ("-", ("b",))]
    first.confirm.set()
    await wait_until(lambda: h.events == [("up", False)], "it to be confirmed")

    first.end()
    await wait_until(lambda: h.listener.link is None and first.closed, "the loss")
    # Between connections: only the set changes, and the next snapshot carries it.
    h.listener.subscribe({"d"})
    h.listener.unsubscribe({"a"})
    second = h.link()
    await wait_until(lambda: h.events[-1] == ("up", True), "the second connection up")
    assert second.writes == [("+", ("c", "d"))]
    assert h.events == [("up", False), "ConnectionError", ("up", True)]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_backoff_doubles_to_its_bound_and_a_success_resets_it(
    no_wait: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bushub.broker.listener")
    h = Harness()
    h.listener.subscribe({"a"})
    for _ in range(4):
        h.outcomes.put_nowait(ConnectionRefusedError("refused"))
    link = h.link()
    task = asyncio.create_task(h.listener.run())
    await wait_until(
        lambda: ("up", True) not in h.events and ("up", False) in h.events,
        "the first connection up",
    )
    assert delays(caplog) == ["0.05s", "0.10s", "0.20s", "0.20s"]
    assert h.events == ["ConnectionRefusedError"] * 4 + [("up", False)]
    h.outcomes.put_nowait(TimeoutError())
    h.link()
    link.end()
    await wait_until(lambda: h.events[-1] == ("up", True), "the reconnect")
    assert delays(caplog)[4:] == ["0.05s", "0.10s"]  # reset by the success
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_refusals_and_outages_are_logged_apart(
    no_wait: None, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness()
    h.listener.subscribe({"a"})
    h.outcomes.put_nowait(ReplyError("redis refused AUTH: WRONGPASS invalid username-password"))
    h.outcomes.put_nowait(NoPermissionError("this user has no permissions to run 'subscribe'"))
    h.outcomes.put_nowait(OSError("Connect call failed"))
    h.link()
    with caplog.at_level(logging.WARNING, logger="bushub.broker.listener"):
        task = asyncio.create_task(h.listener.run())
        await wait_until(lambda: ("up", False) in h.events, "the connection up")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert caplog.messages == [
        "redis refused this node (ReplyError: redis refused AUTH: WRONGPASS invalid "
        "username-password); retrying in 0.05s",
        "redis refused this node (NoPermissionError: this user has no permissions to run "
        "'subscribe'); retrying in 0.10s",
        "redis unreachable (OSError); retrying in 0.20s",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_a_connection_that_never_confirms_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener_module, "SUBSCRIBE_SECONDS", 0.05)
    h = Harness()
    h.listener.subscribe({"a"})
    silent = h.link()
    silent.confirm.clear()
    task = asyncio.create_task(h.listener.run())
    await wait_until(lambda: h.events == ["TimeoutError"], "the connection to be given up on")
    assert silent.closed
    h.link()
    await wait_until(lambda: h.events == ["TimeoutError", ("up", False)], "the next one up")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
