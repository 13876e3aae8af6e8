"""Stopping a task for sure.

On Python 3.11 a cancel can be lost: ``asyncio.wait_for``, met by one in the loop turn
its inner await ends, returns (or raises) what that await ended with, and a task that
retries on failures runs on. The hub's own waits use ``asyncio.timeout``; a library's
may not, and a node stopping while Redis was out of reach never ended, a second
signal notwithstanding (uvicorn waits for the lifespan's shutdown whatever comes).
"""

import asyncio
from typing import Any

# How long a cancelled task is given to end before it is cancelled again.
_AGAIN_AFTER = 0.5


async def cancelled(*tasks: "asyncio.Task[Any]") -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again the ones that
    run on (a cancel they lost). What they ended with is not raised."""
    running = {task for task in tasks if not task.done()}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=_AGAIN_AFTER)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a failure at the end is nobody's to handle
