"""The watch on a subscription connection (bushub.broker.liveness), on a stand-in:
silence with a PING waiting ends it; anything read is life; a refusal answered in
the PING's place is reported, not taken for a lost connection."""

import asyncio

import pytest
from redis.exceptions import NoPermissionError

from bushub.broker import liveness

STEP = 0.02


class Link:
    """Reads when told; answers a PING when let (or with an error)."""

    def __init__(self) -> None:
        self.reads = 0
        self.pings = 0
        self.refused: list[Exception] = []
        self.on_refused = self.refused.append
        self.answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def ping(self) -> None:
        self.pings += 1
        await asyncio.shield(self.answer)


@pytest.fixture(autouse=True)
def brief(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liveness, "PING_AFTER", STEP)
    monkeypatch.setattr(liveness, "SILENT_LIMIT", 5 * STEP)


async def test_silence_with_a_ping_waiting_ends_the_connection() -> None:
    link = Link()
    with pytest.raises(TimeoutError, match="silent for"):
        await asyncio.wait_for(liveness.watch(link), 40 * STEP)
    assert link.pings == 1


async def test_anything_read_is_life_though_the_pong_is_late() -> None:
    """A node working through a backlog reads on; its pong comes after it."""
    link = Link()
    watch = asyncio.ensure_future(liveness.watch(link))
    for _ in range(30):  # six silence limits' worth, a read every step
        await asyncio.sleep(STEP)
        link.reads += 1
    assert not watch.done()
    assert link.pings == 0, "no PING while messages come"
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)


async def test_an_answered_ping_keeps_it_and_a_refusal_is_reported() -> None:
    link = Link()
    refusal = NoPermissionError("NOPERM this user has no permissions to access one of the channels")
    link.answer.set_exception(refusal)
    watch = asyncio.ensure_future(liveness.watch(link))
    await asyncio.sleep(10 * STEP)
    assert not watch.done()
    assert link.pings >= 2 and link.refused and link.refused[0] is refusal
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
