"""What the per-message benchmarks of the hub's code without I/O share
(``bench/hub_path.py``, ``bench/session_path.py``): their command line, and the
variants timed alternately, so that a shared machine's drift falls on all alike."""

import argparse
import asyncio
import statistics
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

K = TypeVar("K")


def alternated(
    runs: Mapping[K, Callable[[int], float]], repeat: int, iterations: int
) -> dict[K, float]:
    """Each variant's median over ``repeat`` rounds of ``run(iterations)`` (its CPU µs
    per message), every round running every variant once, in turn."""
    samples: dict[K, list[float]] = {key: [] for key in runs}
    for _ in range(repeat):
        for key, run in runs.items():
            samples[key].append(run(iterations))
    return {key: statistics.median(values) for key, values in samples.items()}


def main(doc: str, body: Callable[[int, int], Coroutine[Any, Any, None]]) -> None:
    """Parse ``--repeat`` and ``--iterations`` and run ``body(repeat, iterations)``.

    Args:
        doc: The script's docstring; its first line describes the command.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=31)
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    asyncio.run(body(args.repeat, args.iterations))
