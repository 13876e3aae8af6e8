"""The control variant's burner: its duty cycle, its correction, and a real run."""

import signal
import subprocess
import sys
import time

import pytest
from busbench import burner


def test_idle_makes_the_duty_cycle() -> None:
    assert burner.idle_for(0.0002, 0.25) == pytest.approx(0.0006)
    assert burner.idle_for(0.0002, 1.0) == 0.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            burner.idle_for(0.0002, bad)


def test_correction_scales_the_sleep_by_the_share_missed() -> None:
    # Busier than asked: sleep longer; less busy (sleeps overshoot): shorter.
    assert burner.corrected(0.001, 0.25, spent=0.05, wall=0.1) == pytest.approx(0.002)
    assert burner.corrected(0.001, 0.25, spent=0.0125, wall=0.1) == pytest.approx(0.0005)
    # Never stuck at no sleep, never more than a second, none at a whole core.
    assert burner.corrected(0.0, 0.25, spent=0.1, wall=0.1) == burner.MIN_IDLE_S
    assert burner.corrected(0.5, 0.01, spent=0.1, wall=0.1) == 1.0
    assert burner.corrected(0.001, 1.0, spent=0.1, wall=0.1) == 0.0
    # Nothing measured: unchanged.
    assert burner.corrected(0.001, 0.25, spent=0.0, wall=0.1) == 0.001


def test_a_burner_takes_about_its_share_and_stops_when_terminated() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "busbench.burner", "0.3"])
    try:
        time.sleep(1.5)
        assert proc.poll() is None  # runs until told
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in ticks
        # A share, not a whole core nor nothing (loose: the machine is shared).
        assert 0.1 < cpu_s < 1.2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_burner_given_seconds_stops_by_itself() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "busbench.burner", "0.2", "--seconds", "0.3"], timeout=20
    )
    assert done.returncode == 0
    assert time.monotonic() - started < 15
