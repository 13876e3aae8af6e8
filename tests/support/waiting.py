"""Waiting for what a test observes: one polling loop, sync and async.

Both return True once the predicate holds and False when ``timeout`` passed first;
given ``what``, a timeout fails the test instead, naming what never happened. The sync
one may also watch a process (``proc``), failing at once if it exits meanwhile.
"""

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

# The one constant every timeout in the process suites derives from, in seconds: the
# longest a single step (a process starting, a message arriving) may take on a loaded
# machine. ``BUSHUB_TEST_TIMEOUT`` scales it on slow machines.
TIMEOUT = float(os.environ.get("BUSHUB_TEST_TIMEOUT", "10"))


class Watched(Protocol):
    """A child process a wait gives up on if it exits."""

    name: str

    @property
    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = TIMEOUT,
    step: float = 0.05,
    *,
    what: str | None = None,
    proc: Watched | None = None,
) -> bool:
    """Poll ``predicate`` every ``step`` seconds until it holds or ``timeout`` passes.

    Raises:
        AssertionError: ``what`` was given and the timeout passed.
        RuntimeError: ``proc`` exited while waiting.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and not proc.alive:
            raise RuntimeError(
                f"{proc.name} exited ({proc.returncode}) while waiting for {what or 'a condition'}"
            )
        time.sleep(step)
    return _last(predicate(), timeout, what, proc)


async def until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = TIMEOUT,
    step: float = 0.02,
    *,
    what: str | None = None,
) -> bool:
    """The async `wait_until`; ``predicate`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result or time.monotonic() >= deadline:
            return _last(result, timeout, what)
        await asyncio.sleep(step)


def _last(held: bool, timeout: float, what: str | None, proc: Watched | None = None) -> bool:
    if not held and what is not None:
        who = f"{proc.name}: " if proc is not None else ""
        raise AssertionError(f"{who}timed out after {timeout:.1f}s waiting for {what}")
    return held
