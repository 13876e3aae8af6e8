"""``bushub-bench --resume``: what sessions cost, measured side by side in one run.

Workload R (K pairs, ``a_i`` on node 1, ``b_i`` on node 2, ``b_i`` echoes to ``a_i``)
in three variants, alternating, ``--reps`` times, on one Redis of their own:

- ``off``: two hub nodes with ``--resume-window 0``, plain sockets (the path before
  sessions);
- ``on-plain``: two hub nodes with sessions on, plain sockets (what stock proxies pay
  for the hub having sessions on: the delivery script instead of ``PUBLISH``);
- ``on-session``: the same nodes, both ends of every pair a session socket
  (``busbench.sessionload``): every message kept in the target's stream until
  acknowledged;
- ``off-busy`` (a control, unless ``--resume-control off``): the fixed-rate phases of
  ``off`` again, beside a burner (``busbench.burner``) that keeps as many more cores
  busy as ``on-session`` did over ``off`` in the same repetition. On a machine whose
  Redis and load generator share the hubs' cores, what session sockets add anywhere
  delays every process's wake-ups; ``on-session`` against ``off-busy`` is what is left
  once the machine is as busy.

Then the Redis memory and CPU per session (``busbench.sessionmem``) on a fresh Redis
and node. The figures and the report are ``busbench.report.resume``'s.
"""

import argparse
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from busbench import sessionmem, sidebyside
from busbench.payloads import Builder
from busbench.procs import Procs
from busbench.report.figures import phase_figures
from busbench.sidebyside import Log, NodePair

VARIANTS = ("off", "on-plain", "on-session")
CONTROL = "off-busy"
_TAG = {"off": "f", "on-plain": "p", "on-session": "s", CONTROL: "b"}
# Less added load than this is not worth a burner process.
_MIN_CORES = 0.01
# A burner stops by itself this long after its phase should have ended.
_BURNER_SLACK_S = 30.0
SESSIONS_OFF = ["--resume-window", "0"]

RunLoadgen = Callable[[dict[str, Any], Path, str], dict[str, Any]]
combos = sidebyside.combos


def phases(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per combination: the fixed rate, then saturation (workload R's two phases)."""
    return sidebyside.phases(args, args.resume_combos)


def added_cores(off: dict[str, Any], session: dict[str, Any]) -> dict[str, float]:
    """Per fixed-rate phase: how many more cores the machine was busy in the session
    sockets' run than in sessions off's (0 where it was not busier or not read)."""
    busy_off = _busy(off)
    out = {}
    for name, cores in _busy(session).items():
        base = busy_off.get(name)
        out[name] = max(0.0, cores - base) if base is not None else 0.0
    return out


def _busy(run: dict[str, Any]) -> dict[str, float]:
    out = {}
    for phase in run.get("phases") or []:
        if phase["kind"] == "fixed":
            busy = phase_figures(phase)["machine_busy"]
            if busy is not None:
                out[phase["name"]] = busy
    return out


def burner_argv(cores: float, seconds: float) -> list[list[str]]:
    """Burner processes that keep ``cores`` busy (one core at most each) and stop by
    themselves after ``seconds``; none for less than ``_MIN_CORES``."""
    if cores < _MIN_CORES:
        return []
    n = math.ceil(cores)
    share = f"{cores / n:.3f}"
    return [
        [sys.executable, "-m", "busbench.burner", share, "--seconds", f"{seconds:g}"]
        for _ in range(n)
    ]


def control_phases(args: argparse.Namespace, added: dict[str, float]) -> list[dict[str, Any]]:
    """The fixed-rate phases only, each beside burners as busy as ``added`` says."""
    out = []
    for phase in phases(args):
        if phase["kind"] != "fixed":
            continue
        seconds = phase["warmup"] + phase["duration"] + _BURNER_SLACK_S
        out.append({**phase, "beside": burner_argv(added.get(phase["name"], 0.0), seconds)})
    return out


def names(variant: str, rep: int, fmt: str, k: int) -> tuple[list[str], list[str]]:
    """Fresh agent names per variant and repetition: an away session of an earlier job
    never holds a name a later job uses."""
    return sidebyside.names(f"r{_TAG[variant]}{rep}{fmt[0]}", k)


def job(
    jobs: Any,
    args: argparse.Namespace,
    variant: str,
    rep: int,
    urls: tuple[str, str],
    pids: dict[str, int],
) -> dict[str, Any]:
    """One load-generator job: K pairs per format used, the resume phases."""
    return sidebyside.job(
        jobs,
        args,
        args.resume_combos,
        variant,
        lambda fmt: names(variant, rep, fmt, args.pairs),
        urls,
        pids,
        sessions=variant == "on-session",
        ack_every=args.resume_ack_every,
        ack_delay=args.resume_ack_delay,
    )


def run(
    args: argparse.Namespace,
    jobs: Any,
    procs: Procs,
    extra: list[str],
    work: Path,
    log: Log,
    run_loadgen: RunLoadgen,
) -> dict[str, Any]:
    """The three variants and the control, alternating, then the memory measurement."""
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
    off1, off2, on1, on2 = sidebyside.start_ready(
        procs,
        redis,
        [
            ("off1", SESSIONS_OFF + extra),
            ("off2", SESSIONS_OFF + extra),
            ("on1", extra),
            ("on2", extra),
        ],
    )
    nodes = {"off": NodePair(off1, off2, redis), "on": NodePair(on1, on2, redis)}
    out["hub_argv"] = {side: shlex.join(pair.node1.argv) for side, pair in nodes.items()}
    # This repetition's results so far: the control follows the runs it matches.
    latest: dict[str, dict[str, Any]] = {}

    def measure(variant: str, rep: int) -> dict[str, Any]:
        pair = nodes["on" if variant.startswith("on") else "off"]
        spec = job(jobs, args, variant, rep, pair.urls, pair.pids)
        if variant == CONTROL:
            added = added_cores(latest["off"], latest["on-session"])
            spec["phases"] = control_phases(args, added)
        result = sidebyside.measured(
            pair,
            lambda pids: run_loadgen({**spec, "pids": pids}, work, f"resume-{variant}-{rep}"),
        )
        latest[variant] = result
        for phase in result.get("phases") or []:
            for error in phase.get("beside_errors") or []:
                # The control's machine was not as busy as it says: the report's
                # busy-cores column shows by how much.
                log(f"resume rep {rep + 1}: {phase['name']}: burner failed: {error}")
        return result

    variants = VARIANTS + ((CONTROL,) if args.resume_control == "on" else ())
    runs = sidebyside.alternate(variants, args.reps, measure, log, "resume")
    sidebyside.stop_checked(procs, (off1, off2, on1, on2, redis), "resume runs")
    return runs


def _memory(
    args: argparse.Namespace, builder: Builder, procs: Procs, extra: list[str], log: Log
) -> dict[str, Any]:
    """Redis memory and CPU per session, on a fresh Redis and one fresh node."""
    redis = procs.redis()
    cap = ["--max-connections", str(2 * args.resume_sessions + 1000), "--accept-rate", "0"]
    (node,) = sidebyside.start_ready(procs, redis, [("mem", cap + extra)])
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
    sidebyside.stop_checked(procs, (node, redis), "memory measurement")
    return result
