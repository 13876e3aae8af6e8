"""Flag and Inbox behave like the asyncio.Event and asyncio.Queue they stand in for."""

import asyncio

import pytest

from bushub.lightsync import Flag, Inbox, wait_at_most


async def test_flag_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert flag.is_set()
    assert await asyncio.wait_for(flag.wait(), 0.1)  # set: returns at once
    flag.clear()
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not late.done()
    flag.set()
    assert await late


async def test_a_cancelled_waiter_does_not_wake_or_cancel_the_others() -> None:
    flag = Flag()
    first = asyncio.create_task(flag.wait())
    second = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0)
    assert not second.done()
    flag.set()
    assert await second


async def test_flag_callbacks_run_once_when_set_or_at_once_if_set() -> None:
    flag = Flag()
    calls: list[str] = []
    flag.on_set(lambda: calls.append("early"))
    assert calls == []
    flag.set()
    flag.set()
    assert calls == ["early"]
    flag.on_set(lambda: calls.append("late"))
    assert calls == ["early", "late"]


async def test_inbox_is_fifo_with_get_waiting_for_a_put() -> None:
    seen: list[int] = []
    inbox: Inbox[int] = Inbox(seen.append)
    assert inbox.empty()
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await getter == 1
    assert inbox.qsize() == 1 and inbox.get_nowait() == 2
    assert seen == [1, 2]  # on_put saw each item as it was put


async def test_inbox_getter_cancelled_then_another_gets_the_item() -> None:
    inbox: Inbox[str] = Inbox()
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("x")
    assert await asyncio.wait_for(second, 1) == "x"


@pytest.mark.parametrize("kind", [Flag, asyncio.Event])
async def test_a_loop_waiting_at_most_ends_when_cancelled_as_its_event_is_set(
    kind: type[Flag] | type[asyncio.Event],
) -> None:
    # asyncio.wait_for (Python 3.11) returns as if the event came, the cancellation
    # lost, and the loop goes on waiting: a node's stop hung on such a loop.
    event = kind()

    async def loop() -> None:
        while True:
            await wait_at_most(event, 10)
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1)
    assert task in done and task.cancelled()


async def test_waiting_at_most_says_whether_the_event_came() -> None:
    flag = Flag()
    assert not await wait_at_most(flag, 0.01)
    asyncio.get_running_loop().call_later(0.01, flag.set)
    assert await wait_at_most(flag, 5)
