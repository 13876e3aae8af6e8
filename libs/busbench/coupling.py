"""How much the machine's cores slow each other down.

The same CPU-bound loop is timed (CPU time, not wall time) alone and while another
process spins beside it. On a VM whose cores share a physical core, or a host whose
neighbours share its caches, the loop costs more CPU time under load: every process's
CPU per message then grows with what else runs, not only with its own work, and a
variant that adds load anywhere (Redis, the load generator) makes the hubs' figures
swell too. The bench reports the ratio with every run, so that a reader can tell.
"""

import subprocess
import sys
import time

_LOOP = 1_000_000
_SPIN = "while True: pass"


def _loop_cpu_seconds() -> float:
    start = time.process_time()
    total = 0
    for i in range(_LOOP):
        total += i * i
    return time.process_time() - start


def core_coupling(repeat: int = 3) -> float:
    """CPU time of the loop beside a spinning process over its CPU time alone (the
    fastest of ``repeat`` each): 1.0 where cores do not slow each other down."""
    alone = min(_loop_cpu_seconds() for _ in range(repeat))
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        time.sleep(0.2)  # running, on whichever core the kernel gave it
        loaded = min(_loop_cpu_seconds() for _ in range(repeat))
    finally:
        spinner.kill()
        spinner.wait()
    return loaded / alone


def describe(ratio: float) -> str:
    """The report's sentence for a measured ratio."""
    return (
        f"The same CPU-bound loop costs {ratio:.2f}x its CPU time while another process "
        "spins beside it (`busbench.coupling`): CPU per message grows with the machine's "
        "load, not only with the measured process's own work."
    )
