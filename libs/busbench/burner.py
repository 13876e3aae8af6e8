"""Keep a share of a core busy, in short bursts: the load of a control variant.

``python -m busbench.burner CORES`` spins for ``BURST_S`` at a time and sleeps between
bursts so that its CPU time comes to ``CORES`` (0 < CORES <= 1) of the wall time, until
it is terminated. Short bursts, as the hubs', Redis' and the load generator's own work
comes: a process woken while the burner spins waits at most one burst for the core.

``bushub-bench --resume`` runs sessions off beside a burner as busy as what session
sockets add to the machine (``busbench.resume``): what is left of the sessions' p99
ratio against that variant is what the session path itself costs, not the machine's
cores being busier.
"""

import argparse
import signal
import time
from types import FrameType

BURST_S = 0.0002
# How often the sleep between bursts is corrected from the CPU time really spent: a
# sleep overshoots by tens of microseconds, more than a burst's share of it.
ADJUST_S = 0.1
# Never no sleep below a whole core: a sleep of 0 could not be scaled up again.
MIN_IDLE_S = 1e-6


def idle_for(busy_s: float, cores: float) -> float:
    """The sleep after a burst of ``busy_s`` that makes the duty cycle ``cores``."""
    if not 0 < cores <= 1:
        raise ValueError("cores must be within (0, 1]")
    return busy_s * (1 - cores) / cores


def corrected(idle_s: float, cores: float, spent: float, wall: float) -> float:
    """The sleep, scaled by how far the last interval's CPU share (``spent`` CPU
    seconds over ``wall`` seconds) missed ``cores``; within MIN_IDLE_S..1 s, none at
    a whole core."""
    if cores >= 1:
        return 0.0
    if spent <= 0 or wall <= 0:
        return idle_s
    return min(1.0, max(MIN_IDLE_S, idle_s * (spent / wall) / cores))


class Burner:
    """Bursts of spinning with sleeps between them, until ``stop``."""

    def __init__(self, cores: float, burst_s: float = BURST_S) -> None:
        self.cores = cores
        self.burst_s = burst_s
        self.idle_s = idle_for(burst_s, cores)
        self._running = True

    def stop(self) -> None:
        self._running = False

    def run(self, seconds: float | None = None) -> None:
        clock, cpu = time.perf_counter, time.process_time
        end = None if seconds is None else clock() + seconds
        mark_wall, mark_cpu = clock(), cpu()
        while self._running and (end is None or clock() < end):
            until = clock() + self.burst_s
            while clock() < until:
                pass
            if self.idle_s:
                time.sleep(self.idle_s)
            wall = clock() - mark_wall
            if wall >= ADJUST_S:
                spent = cpu() - mark_cpu
                self.idle_s = corrected(self.idle_s, self.cores, spent, wall)
                mark_wall, mark_cpu = clock(), cpu()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cores", type=float, help="share of one core to keep busy, within (0, 1]")
    p.add_argument("--seconds", type=float, help="stop after this long (default: when terminated)")
    args = p.parse_args(argv)
    if not 0 < args.cores <= 1:
        p.error("cores must be within (0, 1]")
    burner = Burner(args.cores)

    def on_term(signum: int, frame: FrameType | None) -> None:
        burner.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    burner.run(args.seconds)


if __name__ == "__main__":
    main()
