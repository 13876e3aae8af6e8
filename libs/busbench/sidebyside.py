"""Workload R in variants side by side: one run, the variants alternating per repetition.

Workload R (K pairs, ``a_i`` on node 1, ``b_i`` on node 2, ``b_i`` echoes to ``a_i``)
is run once per variant per repetition, variant after variant, so that the machine's
drift falls on every variant alike; the report compares each with a baseline measured in
the same run (``busbench.report.sidebyside``). ``busbench.resume`` and
``busbench.operators`` are the measurements built on it.
"""

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from busbench.payloads import FORMATS
from busbench.procs import Child, Procs, dropped_counters, http_ready, wait_until

Log = Callable[[str], None]
# (variant, repetition) -> the load generator's result of that run
Measure = Callable[[str, int], dict[str, Any]]
# fmt -> (a names, b names)
Names = Callable[[str], tuple[list[str], list[str]]]


def combos(text: str) -> list[str]:
    """``task-json,audio-json`` -> its payload-format combinations, in order."""
    return [c.strip() for c in text.split(",") if c.strip()]


def phases(args: argparse.Namespace, combinations: list[str]) -> list[dict[str, Any]]:
    """Per combination: the fixed rate, then saturation (workload R's two phases)."""
    out = []
    for combo in combinations:
        payload, _, fmt = combo.partition("-")
        common = {"set": fmt, "payload": payload, "warmup": args.warmup}
        out.append(
            {
                "name": f"{combo}/fixed",
                "kind": "fixed",
                "rate": args.rate,
                "duration": args.fixed_seconds,
                **common,
            }
        )
        out.append(
            {
                "name": f"{combo}/saturation",
                "kind": "saturation",
                "inflight": args.inflight,
                "duration": args.sat_seconds,
                **common,
            }
        )
    return out


def names(tag: str, k: int) -> tuple[list[str], list[str]]:
    """``a_i`` and ``b_i`` of K pairs, ``tag`` telling one job's from another's."""
    return [f"a{i:03d}{tag}" for i in range(k)], [f"b{i:03d}{tag}" for i in range(k)]


def job(
    jobs: Any,
    args: argparse.Namespace,
    combinations: list[str],
    variant: str,
    pair_names: Names,
    urls: tuple[str, str],
    pids: dict[str, int],
    **options: Any,
) -> dict[str, Any]:
    """One load-generator job: K pairs per format the combinations use, their phases;
    ``options`` go into the job as they are."""
    formats = {c.partition("-")[2] for c in combinations}
    sets = []
    for fmt in FORMATS:
        if fmt in formats:
            a_names, b_names = pair_names(fmt)
            sets.append(jobs.pair_set(fmt, fmt, a_names, b_names, *urls))
    return {
        "kind": "pairs",
        "server": variant,
        "sets": sets,
        "phases": phases(args, combinations),
        "pids": pids,
        "expect_registry": True,
        "compression": args.compression,
        **options,
    }


@dataclass(frozen=True)
class NodePair:
    """Two hub nodes on one Redis: where workload R runs."""

    node1: Child
    node2: Child
    redis: Child

    @property
    def urls(self) -> tuple[str, str]:
        return (f"ws://127.0.0.1:{self.node1.port}", f"ws://127.0.0.1:{self.node2.port}")

    @property
    def pids(self) -> dict[str, int]:
        """The processes the load generator measures."""
        return {"node1": self.node1.pid, "node2": self.node2.pid, "redis": self.redis.pid}

    def drops(self) -> dict[str, float]:
        """Both nodes' dropped counters by reason, summed."""
        total: dict[str, float] = {}
        for node in (self.node1, self.node2):
            for reason, value in dropped_counters(node.port).items():
                total[reason] = total.get(reason, 0.0) + value
        return total


def start_ready(procs: Procs, redis: Child, nodes: list[tuple[str, list[str]]]) -> list[Child]:
    """Hub nodes ``(node id, flags)`` on ``redis``, each answering ``/readyz``."""
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    children = [procs.hub(node, redis_url, flags) for node, flags in nodes]
    for child in children:
        wait_until(lambda c=child: http_ready(c.port), 30, child, "/readyz 200")
    return children


def measured(
    pair: NodePair,
    run: Callable[[dict[str, int]], dict[str, Any]],
    pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One load-generator run on ``pair``, with what the nodes dropped meanwhile.

    Args:
        pair: The nodes.
        run: Runs the job measuring ``pids``; returns its result.
        pids: Processes measured besides the pair's own (named by role).
    """
    before = pair.drops()
    result = run({**pair.pids, **(pids or {})})
    after = pair.drops()
    result["drops"] = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k)}
    return result


def alternate(
    variants: Iterable[str], reps: int, measure: Measure, log: Log, what: str
) -> list[dict[str, Any]]:
    """Every variant once per repetition, in order; each result tagged with both."""
    runs = []
    order = list(variants)
    for rep in range(reps):
        for variant in order:
            log(f"{what} rep {rep + 1}/{reps}: {variant}")
            result = measure(variant, rep)
            result.update(server=variant, rep=rep)
            runs.append(result)
    return runs


def stop_checked(procs: Procs, children: Iterable[Child], what: str) -> None:
    """Stop ``children``; one that died before is an error (its log tail in it)."""
    for child in children:
        if not child.alive:
            raise RuntimeError(f"{child.name} died during the {what}:\n{child.log_tail()}")
        procs.stop(child)
