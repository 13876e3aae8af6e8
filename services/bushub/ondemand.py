"""A background task that runs while there is work and is gone when there is none.

The operator views (taps, reports, notices, their publisher) each have one: started by
the first piece of work, ending by itself when it runs out, so a node nobody watches
has no task for them at all.
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class OnDemandTask:
    """At most one running ``run()`` at a time, started by `ensure`.

    Args:
        run: The work; it returns when there is none left.
        name: The task's name, for debugging.
    """

    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._run = run
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while a run is under way."""
        return self._task is not None

    def ensure(self) -> None:
        """Start a run unless one is under way."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._wrapped(), name=self._name)

    async def _wrapped(self) -> None:
        try:
            await self._run()
        except Exception:
            # Logged here, so that a failed run neither ends the node nor goes unseen;
            # the next piece of work starts a new one.
            log.exception("%s failed", self._name)
        finally:
            self._task = None

    async def finished(self) -> None:
        """Wait until no run is under way (one started meanwhile included)."""
        while (task := self._task) is not None:
            await asyncio.wait({task})  # never raises, never cancels the run

    async def close(self) -> None:
        """Cancel the run under way, if any, and wait for it to end."""
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
