"""A throwaway redis-server on a free port for the tests of the raw Redis connections,
and a way to run one scenario on both event loops the hub meets: asyncio's (the
test suites' in-process nodes) and uvloop (what ``bushub serve`` runs on)."""

import asyncio
import shutil
import signal
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from tests.reliability.harness import FaultRedis
from tests.unit.bushub.helpers import TIMEOUT

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")


def run(loop: str, scenario: Coroutine[Any, Any, T]) -> T:
    """Run ``scenario`` on a fresh loop of the kind named, bounded as a whole."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(scenario, 10 * TIMEOUT))


def running_redis(tmp_path: Path) -> Iterator[FaultRedis]:
    """Start a redis-server for one test; stopped (even if left SIGSTOPped) after."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = FaultRedis(tmp_path / "redis.log")
    redis.start()
    try:
        yield redis
    finally:
        redis.signal(signal.SIGCONT)
        redis.stop()


async def off_loop(fn: Callable[[], T]) -> T:
    """Run a blocking call (redis-cli, a process wait) without stalling the loop."""
    return await asyncio.to_thread(fn)
