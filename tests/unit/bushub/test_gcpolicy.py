"""The node's collection policy is in force once it serves, and only then."""

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from bushub import cli, gcpolicy
from bushub.settings import Settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_apply_raises_the_thresholds_and_freezes_what_exists(restored_gc: None) -> None:
    survivor = [object()]  # a container alive now: frozen with the rest
    gcpolicy.apply()
    assert gc.get_threshold() == (
        gcpolicy.GEN0_THRESHOLD,
        gcpolicy.GEN1_THRESHOLD,
        gcpolicy.GEN2_THRESHOLD,
    )
    assert gc.get_freeze_count() > 0
    assert not any(survivor is obj for obj in gc.get_objects())  # no generation scans it


def test_serve_applies_the_policy_before_the_server_runs(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def run(server: cli.DrainingServer) -> None:
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    gc.set_threshold(700, 10, 10)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    monkeypatch.setattr(cli, "raise_fd_limit", lambda *args: None)
    monkeypatch.setattr(cli.DrainingServer, "run", run)
    cli.serve(Settings(port=0))
    assert seen["threshold"][0] == gcpolicy.GEN0_THRESHOLD
    assert seen["frozen"] > 0
