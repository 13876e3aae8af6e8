"""``bushub-bench --resume``: what sessions cost, measured side by side in one run.

Workload R (K pairs, ``a_i`` on node 1, ``b_i`` on node 2, ``b_i`` echoes to ``a_i``)
in three variants, alternating, ``--reps`` times, on one Redis of their own:

- ``off``: two hub nodes with ``--resume-window 0``, plain sockets (the path before
  sessions);
- ``on-plain``: two hub nodes with sessions on, plain sockets (what stock proxies pay
  for the hub having sessions on: the delivery script instead of ``PUBLISH``);
- ``on-session``: the same nodes, both ends of every pair a session socket
  (``busbench.sessionload``): every message kept in the target's stream until
  acknowledged.

Then the Redis memory and CPU per session (``busbench.sessionmem``) on a fresh Redis
and node. The figures and the report are ``busbench.report.resume``'s.
"""

import argparse
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from busbench import sessionmem
from busbench.payloads import FORMATS, Builder
from busbench.procs import Child, Procs, dropped_counters, http_ready, wait_until

VARIANTS = ("off", "on-plain", "on-session")
_TAG = {"off": "f", "on-plain": "p", "on-session": "s"}
SESSIONS_OFF = ["--resume-window", "0"]

Log = Callable[[str], None]
RunLoadgen = Callable[[dict[str, Any], Path, str], dict[str, Any]]


def combos(text: str) -> list[str]:
    """``task-json,audio-json`` -> its payload-format combinations, in order."""
    return [c.strip() for c in text.split(",") if c.strip()]


def phases(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per combination: the fixed rate, then saturation (workload R's two phases)."""
    out = []
    for combo in args.resume_combos:
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


def names(variant: str, rep: int, fmt: str, k: int) -> tuple[list[str], list[str]]:
    """Fresh agent names per variant and repetition: an away session of an earlier job
    never holds a name a later job uses."""
    tag = f"r{_TAG[variant]}{rep}{fmt[0]}"
    return [f"a{i:03d}{tag}" for i in range(k)], [f"b{i:03d}{tag}" for i in range(k)]


def job(
    jobs: Any,
    args: argparse.Namespace,
    variant: str,
    rep: int,
    urls: tuple[str, str],
    pids: dict[str, int],
) -> dict[str, Any]:
    """One load-generator job: K pairs per format used, the resume phases."""
    formats = {c.partition("-")[2] for c in args.resume_combos}
    sets = []
    for fmt in FORMATS:
        if fmt in formats:
            a_names, b_names = names(variant, rep, fmt, args.pairs)
            sets.append(jobs.pair_set(fmt, fmt, a_names, b_names, *urls))
    return {
        "kind": "pairs",
        "server": variant,
        "sets": sets,
        "phases": phases(args),
        "pids": pids,
        "expect_registry": True,
        "compression": args.compression,
        "sessions": variant == "on-session",
        "ack_every": args.resume_ack_every,
        "ack_delay": args.resume_ack_delay,
    }


def _drops(nodes: tuple[Child, Child]) -> dict[str, float]:
    total: dict[str, float] = {}
    for node in nodes:
        for reason, value in dropped_counters(node.port).items():
            total[reason] = total.get(reason, 0.0) + value
    return total


def run(
    args: argparse.Namespace,
    jobs: Any,
    procs: Procs,
    extra: list[str],
    work: Path,
    log: Log,
    run_loadgen: RunLoadgen,
) -> dict[str, Any]:
    """The three variants, alternating, then the memory measurement."""
    out: dict[str, Any] = {"runs": [], "memory": None, "hub_argv": {}}
    if args.reps and args.resume_combos:
        out["runs"] = _workload(args, jobs, procs, extra, work, log, run_loadgen, out)
    if args.resume_sessions:
        out["memory"] = _memory(args, jobs.builder, procs, extra, log)
    return out


def _workload(
    args: argparse.Namespace,
    jobs: Any,
    procs: Procs,
    extra: list[str],
    work: Path,
    log: Log,
    run_loadgen: RunLoadgen,
    out: dict[str, Any],
) -> list[dict[str, Any]]:
    redis = procs.redis()
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    nodes = {
        "off": (
            procs.hub("off1", redis_url, SESSIONS_OFF + extra),
            procs.hub("off2", redis_url, SESSIONS_OFF + extra),
        ),
        "on": (procs.hub("on1", redis_url, extra), procs.hub("on2", redis_url, extra)),
    }
    for pair in nodes.values():
        for node in pair:
            wait_until(lambda n=node: http_ready(n.port), 30, node, "/readyz 200")
    out["hub_argv"] = {side: shlex.join(pair[0].argv) for side, pair in nodes.items()}
    runs = []
    for rep in range(args.reps):
        for variant in VARIANTS:
            n1, n2 = nodes["off" if variant == "off" else "on"]
            pids = {"node1": n1.pid, "node2": n2.pid, "redis": redis.pid}
            urls = (f"ws://127.0.0.1:{n1.port}", f"ws://127.0.0.1:{n2.port}")
            drops0 = _drops((n1, n2))
            log(f"resume rep {rep + 1}/{args.reps}: {variant}")
            result = run_loadgen(
                job(jobs, args, variant, rep, urls, pids), work, f"resume-{variant}-{rep}"
            )
            drops1 = _drops((n1, n2))
            result.update(
                server=variant,
                rep=rep,
                drops={k: v - drops0.get(k, 0.0) for k, v in drops1.items() if v != drops0.get(k)},
            )
            runs.append(result)
    for child in (*nodes["off"], *nodes["on"]):
        if not child.alive:
            raise RuntimeError(f"{child.name} died during the run:\n{child.log_tail()}")
        procs.stop(child)
    if not redis.alive:
        raise RuntimeError(f"redis died during the resume runs:\n{redis.log_tail()}")
    procs.stop(redis)
    return runs


def _memory(
    args: argparse.Namespace, builder: Builder, procs: Procs, extra: list[str], log: Log
) -> dict[str, Any]:
    """Redis memory and CPU per session, on a fresh Redis and one fresh node."""
    redis = procs.redis()
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    cap = ["--max-connections", str(2 * args.resume_sessions + 1000), "--accept-rate", "0"]
    node = procs.hub("mem", redis_url, cap + extra)
    wait_until(lambda: http_ready(node.port), 30, node, "/readyz 200")
    plan = sessionmem.MemoryPlan(
        sessions=args.resume_sessions,
        messages=args.resume_messages,
        combos=args.resume_combos,
        away_s=args.resume_away,
    )
    result = sessionmem.measure(
        plan, builder, f"ws://127.0.0.1:{node.port}", (redis.pid, redis.port), node.pid, log
    )
    result["hub_argv"] = shlex.join(node.argv)
    for child in (node, redis):
        if not child.alive:
            raise RuntimeError(f"{child.name} died during the run:\n{child.log_tail()}")
        procs.stop(child)
    return result
