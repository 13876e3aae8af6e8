"""Unit tests test pure logic and in-process nodes: none may start a redis-server.

Tests against a real Redis live in ``tests/integration``; this guard keeps them there.
"""

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_Popen = subprocess.Popen


class _NoRedisPopen(_Popen):  # type: ignore[type-arg]
    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        argv = [args] if isinstance(args, str | bytes | Path) else list(args)
        program = Path(str(argv[0])).name if argv else ""
        if program.startswith("redis-server"):
            raise AssertionError("a unit test started redis-server: move it to tests/integration")
        super().__init__(args, *rest, **kwargs)


@pytest.fixture(autouse=True)
def _no_redis_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess, "Popen", _NoRedisPopen)
    yield
