"""A node's stop ends its background loops even when one is woken in the same turn.

The heartbeat's loop waits for its next pass or for a wake-up (the broker is back, a
refusal met elsewhere). A stop that cancelled it in the loop turn that woke it was
lost on Python 3.11 (``asyncio.wait_for`` returned as if woken) and the stop waited
for ever: seen as a node whose last sockets closed just before it was stopped.
"""

import asyncio

from tests.unit.bushub.conftest import running_hub, small_settings


async def test_a_stop_that_comes_with_a_heartbeat_wake_up_ends() -> None:
    async with running_hub(small_settings()) as node:
        await asyncio.sleep(0.05)  # the heartbeat loop is waiting for its next pass
        node.hub.heartbeat.reconcile_soon()
        await asyncio.wait_for(node.hub.stop(), 2)
