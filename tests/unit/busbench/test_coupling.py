"""The cores' coupling probe: a ratio of CPU times, and no spinner left behind."""

import subprocess
from typing import Any

import pytest
from busbench import coupling


def test_the_probe_gives_a_ratio_and_stops_its_spinner(monkeypatch: pytest.MonkeyPatch) -> None:
    spinners: list[subprocess.Popen[Any]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        process = real_popen(*args, **kwargs)
        spinners.append(process)
        return process

    monkeypatch.setattr(coupling.subprocess, "Popen", recording_popen)
    ratio = coupling.core_coupling(repeat=1)
    # A ratio of CPU times, not a verdict: one repetition on a shared VM has given
    # 0.65 to 1.7 (the loop's CPU time swings with the host), never near 0 or 10.
    assert 0.3 < ratio < 10
    [spinner] = spinners
    assert spinner.returncode is not None, "the spinner is still running"
    assert f"{ratio:.2f}x" in coupling.describe(ratio)
