"""Calls of one event-loop iteration go as one batch; each caller gets its own result
or its own error, and a batch that fails fails each of its callers."""

import asyncio

import pytest

from bushub.broker.coalesce import Coalesced


class Recorder:
    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail

    async def send(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_concurrent_calls_share_one_batch_in_call_order() -> None:
    recorder = Recorder()
    call = Coalesced(recorder.send)
    results = await asyncio.gather(*(call(i) for i in (0, 2, 4)))
    assert results == [0, 20, 40]
    assert recorder.batches == [[0, 2, 4]]
    # A later call is a batch of its own.
    assert await call(6) == 60
    assert recorder.batches == [[0, 2, 4], [6]]


async def test_an_item_that_fails_alone_fails_only_its_caller() -> None:
    call = Coalesced(Recorder().send)
    results = await asyncio.gather(call(2), call(3), call(4), return_exceptions=True)
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], ValueError)


async def test_a_failed_batch_fails_every_caller() -> None:
    call = Coalesced(Recorder(ConnectionError("gone")).send)
    results = await asyncio.gather(call(2), call(4), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_a_caller_that_gives_up_leaves_the_others_their_results() -> None:
    recorder = Recorder()
    call = Coalesced(recorder.send)
    quitter = asyncio.ensure_future(call(2))
    stayer = asyncio.ensure_future(call(4))
    await asyncio.sleep(0)
    quitter.cancel()
    assert await stayer == 40
    with pytest.raises(asyncio.CancelledError):
        await quitter
