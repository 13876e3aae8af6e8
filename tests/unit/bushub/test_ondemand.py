"""OnDemandTask: one run at a time, gone when its work is, cancellable."""

import asyncio

import pytest

from bushub.ondemand import OnDemandTask


async def test_one_run_at_a_time_and_none_once_the_work_is_done() -> None:
    runs = 0
    release = asyncio.Event()

    async def work() -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    task = OnDemandTask(work, "work")
    assert not task.running
    task.ensure()
    task.ensure()  # under way: no second run
    await asyncio.sleep(0)
    assert task.running and runs == 1
    release.set()
    await task.finished()
    assert not task.running
    task.ensure()  # work again: a new run
    await task.finished()
    assert runs == 2


async def test_close_cancels_the_run_under_way() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = OnDemandTask(forever, "forever")
    task.ensure()
    await asyncio.sleep(0)
    await task.close()
    assert cancelled.is_set() and not task.running
    await task.close()  # nothing under way: nothing to do


async def test_a_failed_run_is_logged_and_does_not_stop_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first run fails")

    task = OnDemandTask(flaky, "flaky")
    task.ensure()
    await task.finished()
    assert not task.running
    assert "flaky failed" in caplog.text and "first run fails" in caplog.text
    task.ensure()
    await task.finished()
    assert calls == 2
