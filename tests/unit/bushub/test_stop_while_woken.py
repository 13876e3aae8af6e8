"""A node's stop ends its background loops even when one is woken in the same turn.

The heartbeat's loop waits for its next pass or for a wake-up (the broker is back, a
refusal met elsewhere). A stop that cancelled it in the loop turn that woke it was
lost on Python 3.11 (``asyncio.wait_for`` returned as if woken) and the stop waited
for ever: seen as a node whose last sockets closed just before it was stopped.
"""

import asyncio
import contextlib

from bushub.broker.listener import Listener
from bushub.stopping import cancelled
from tests.unit.bushub.conftest import running_hub, small_settings


async def test_a_stop_that_comes_with_a_heartbeat_wake_up_ends() -> None:
    async with running_hub(small_settings()) as node:
        await asyncio.sleep(0.05)  # the heartbeat loop is waiting for its next pass
        node.hub.heartbeat.reconcile_soon()
        await asyncio.wait_for(node.hub.stop(), 2)


async def _fails_losing_a_cancel() -> None:
    """A connect that fails in the turn a cancel met it and loses the cancel (what
    ``asyncio.wait_for`` does on Python 3.11): the cancel is caught, the failure raised."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)
    raise OSError("connection refused")


async def test_a_listener_stopped_while_redis_is_out_of_reach_ends() -> None:
    """The cancel lost under the failure: the listener retried for good, and the
    node's stop with it (a probe saw nodes run on for minutes after SIGTERM)."""
    listener = Listener(
        "redis", _fails_losing_a_cancel, on_up=_nothing, on_down=_ignored, backoff_max=0.1
    )
    listener.subscribe({"a"})
    task = asyncio.create_task(listener.run())
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()


async def test_a_task_that_lost_a_cancel_is_cancelled_again() -> None:
    """``cancelled`` ends a task that caught the first cancel and ran on."""

    async def runs_on() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        await asyncio.sleep(10)

    task = asyncio.create_task(runs_on())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancelled(task), 3)
    assert task.cancelled()


async def _nothing(again: bool) -> None:
    return None


def _ignored(exc: BaseException) -> None:
    return None
