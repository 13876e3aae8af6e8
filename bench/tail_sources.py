"""Where the slowest round trips of workload R go: sessions off against session sockets,
with what ran on the machine's CPUs meanwhile.

Not a test: it prints Markdown tables, to be read, never asserted on. Run from the
repository root, as root (perf's scheduler events):

    .venv/bin/python bench/tail_sources.py [--payload audio-json] [--seconds 8] [--rounds 3]

One Redis and four nodes as ``bushub-bench --resume`` starts them (two with
``--resume-window 0``, two with sessions on); per round, sessions off then session
sockets at the fixed rate, K pairs, fresh agent names each time. The load generator
writes every timed round trip's send time and length (its phase's ``trace``), and
``perf record -e sched:sched_switch -a`` records what ran on each CPU meanwhile
(without perf, only the percentiles). Printed per variant:

- the percentiles of every round of it pooled (more round trips than one run's p99
  rests on);
- the CPU each process took (in % of one core) over the whole window and while the
  slowest 1 % of round trips were in flight: the run's own processes by role, the
  rest by name;
- how many of those slowest round trips overlapped at least ``--outside-ms`` of a
  process outside the run (the host's own work, another user's), against as many
  spans as long taken from other round trips' send times (what chance alone gives);
- Redis' commands that took it ``--slow-us`` or longer from start to end (its
  ``SLOWLOG``, wall time: a command preempted midway counts the wait), per command,
  against how many it ran (``INFO commandstats``).
"""

import argparse
import bisect
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis as redis_py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from busbench import cli, sidebyside
from busbench.loadgen import percentiles
from busbench.procs import Child, Procs
from busbench.resume import SESSIONS_OFF

VARIANTS = ("off", "on-session")
_SWITCH = re.compile(
    r"\[(\d+)\]\s+([\d.]+): sched:sched_switch: prev_comm=.*? prev_pid=\d+ .*"
    r"==> next_comm=(.*?) next_pid=(\d+)"
)


# Per CPU, who ran from when to when: (start, end, who) in ns, in order, and the starts
# alone (what a span is looked up by).
CpuTimeline = dict[int, tuple[list[tuple[int, int, str]], list[int]]]


@dataclass(frozen=True)
class Run:
    """One variant's round: its round trips and what ran on each CPU meanwhile."""

    trips: list[tuple[int, int]]  # (sent, length) in ns
    cpus: CpuTimeline | None
    slow: "SlowCommands"


@dataclass(frozen=True)
class SlowCommands:
    """Redis' commands in one round: how many ran, and how long the slow ones took."""

    calls: Counter[str]
    slow_us: dict[str, list[int]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payload", default="audio-json", help="task-json or audio-json")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed window per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2000.0, help="round trips/s")
    parser.add_argument("--outside-ms", type=float, default=0.3)
    parser.add_argument("--no-perf", action="store_true")
    parser.add_argument("--slow-us", type=int, default=100, help="Redis' slow-command bar")
    args = parser.parse_args()
    perf = None if args.no_perf else shutil.which("perf")
    work = Path(tempfile.mkdtemp(prefix="tail-sources-"))
    bench = cli.parse_args(
        ["--resume-only", "--pairs", str(args.pairs), "--rate", str(args.rate),
         "--fixed-seconds", str(args.seconds)]
    )  # fmt: skip
    jobs = cli.Jobs(bench)
    procs = Procs(work)
    runs: dict[str, list[Run]] = {v: [] for v in VARIANTS}
    try:
        redis = procs.redis()
        with redis_py.Redis(port=redis.port) as client:
            client.config_set("slowlog-log-slower-than", args.slow_us)
            client.config_set("slowlog-max-len", 1_000_000)
        off1, off2, on1, on2 = sidebyside.start_ready(
            procs,
            redis,
            [("off1", SESSIONS_OFF), ("off2", SESSIONS_OFF), ("on1", []), ("on2", [])],
        )
        pairs = {"off": (off1, off2), "on-session": (on1, on2)}
        for rnd in range(args.rounds):
            for variant in VARIANTS:
                node1, node2 = pairs[variant]
                print(f"round {rnd + 1}/{args.rounds}: {variant}", file=sys.stderr)
                label = f"{variant}-{rnd}"
                run = _run(args, jobs, bench, work, label, (node1, node2, redis), perf)
                runs[variant].append(run)
    finally:
        procs.stop_all()
    _report(args, runs, all(run.cpus is not None for rounds in runs.values() for run in rounds))
    shutil.rmtree(work, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    jobs: cli.Jobs,
    bench: argparse.Namespace,
    work: Path,
    label: str,
    children: tuple[Child, Child, Child],
    perf: str | None,
) -> Run:
    node1, node2, redis = children
    roles = {node1.pid: "hub node 1", node2.pid: "hub node 2", redis.pid: "redis"}
    trace = work / f"trace-{label}.txt"
    urls = (f"ws://127.0.0.1:{node1.port}", f"ws://127.0.0.1:{node2.port}")
    pids = {"node1": node1.pid, "node2": node2.pid, "redis": redis.pid}
    job = sidebyside.job(
        jobs,
        bench,
        [args.payload],
        label,
        lambda fmt: sidebyside.names(f"t{label.replace('-', '')}{fmt[0]}", args.pairs),
        urls,
        pids,
        sessions=label.startswith("on-session"),
    )
    # Workload R's fixed-rate phase (its saturation phase left out), traced.
    fixed = job["phases"][0]
    assert fixed["kind"] == "fixed"
    job["phases"] = [{**fixed, "trace": str(trace)}]
    recording = None
    data = work / f"sched-{label}.data"
    if perf:
        recording = subprocess.Popen(
            [perf, "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", "sched:sched_switch", "-a",
             "-o", str(data), "--", "sleep", f"{fixed['warmup'] + args.seconds + 8:g}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    with redis_py.Redis(port=redis.port) as client:
        client.slowlog_reset()
        client.config_resetstat()
        result = cli.run_loadgen(job, work, label)
        slow = _slow_commands(client)
    counters = result["phases"][0]["counters"]
    if counters["lost"] or counters["duplicate"] or counters["corrupt"]:
        raise RuntimeError(f"{label}: lost or duplicated round trips: {counters}")
    trips = [(int(s), int(r)) for s, r in (line.split() for line in trace.open())]
    cpus = None
    if perf and recording is not None:
        if recording.wait() == 0:
            cpus = _switches(perf, data, {**roles, result["pid"]: "load generator"})
        else:
            print(f"{label}: perf record failed (not root?): no CPU timeline", file=sys.stderr)
    return Run(trips, cpus, slow)


def _slow_commands(client: "redis_py.Redis[bytes]") -> SlowCommands:
    """What Redis ran since its statistics were reset, and its slow log of it."""
    calls: Counter[str] = Counter()
    for name, stat in client.info("commandstats").items():
        calls[name.removeprefix("cmdstat_").upper()] += int(stat["calls"])
    slow_us: dict[str, list[int]] = {}
    for entry in client.slowlog_get(-1):
        name = entry["command"].split(b" ", 1)[0].decode().upper()
        slow_us.setdefault(name, []).append(int(entry["duration"]))
    return SlowCommands(calls, slow_us)


def _switches(perf: str, data: Path, roles: dict[int, str]) -> CpuTimeline:
    """Per CPU, who ran from when to when (idle as ``idle``)."""
    text = subprocess.run(
        [perf, "script", "-i", str(data), "-F", "cpu,time,event,trace"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    intervals: dict[int, list[tuple[int, int, str]]] = {}
    current: dict[int, tuple[int, str]] = {}
    for line in text.splitlines():
        m = _SWITCH.search(line)
        if not m:
            continue
        cpu, at = int(m[1]), int(float(m[2]) * 1e9)
        if cpu in current:
            start, who = current[cpu]
            intervals.setdefault(cpu, []).append((start, at, who))
        pid = int(m[4])
        who = roles.get(pid) or ("idle" if pid == 0 else re.sub(r"[/:.]?\d+$", "", m[3]))
        current[cpu] = (at, who)
    return {cpu: (ran, [i[0] for i in ran]) for cpu, ran in intervals.items()}


def _shares(cpus: CpuTimeline, spans: list[tuple[int, int]]) -> Counter[str]:
    """ns each ``who`` ran during the spans (overlaps counted once per span)."""
    out: Counter[str] = Counter()
    for intervals, starts in cpus.values():
        for a, b in spans:
            i = max(0, bisect.bisect_right(starts, a) - 1)
            while i < len(intervals) and intervals[i][0] < b:
                s, e, who = intervals[i]
                if min(e, b) > max(s, a):
                    out[who] += min(e, b) - max(s, a)
                i += 1
    return out


def _report(args: argparse.Namespace, runs: dict[str, list[Run]], with_cpus: bool) -> None:
    print(f"# Workload R's tail: {args.payload}, {args.rate:g} rt/s, {args.pairs} pairs, "
          f"{args.rounds} x {args.seconds:g} s per variant\n")  # fmt: skip
    print("| variant | round trips | p50 ms | p90 ms | p99 ms | p99.9 ms | p99 per round |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for variant, rounds in runs.items():
        pooled = _percentiles(r for run in rounds for _, r in run.trips)
        cells = " | ".join(f"{pooled[q]:.2f}" for q in ("p50", "p90", "p99", "p999"))
        n = sum(len(run.trips) for run in rounds)
        per = " / ".join(f"{_p99(run):.2f}" for run in rounds)
        print(f"| {variant} | {n:,} | {cells} | {per} |")
    _report_slow(args, runs)
    if not with_cpus:
        print("\n(no perf timeline: what ran meanwhile not recorded)")
        return
    for variant, rounds in runs.items():
        whole: Counter[str] = Counter()
        slow: Counter[str] = Counter()
        whole_ns = slow_ns = 0
        outside_hits = placebo_hits = slowest = 0
        for run in rounds:
            assert run.cpus is not None
            first = min(s for s, _ in run.trips)
            last = max(s + r for s, r in run.trips)
            whole += _shares(run.cpus, [(first, last)])
            whole_ns += last - first
            p99 = _p99(run) * 1e6
            spans = [(s, s + r) for s, r in run.trips if r >= p99]
            slow_ns += sum(b - a for a, b in spans)
            least = args.outside_ms * 1e6
            for i, (a, b) in enumerate(spans):
                took = _shares(run.cpus, [(a, b)])
                slow += took
                outside_hits += _outside(took) >= least
                # The same length from another round trip's send time, spread over the
                # window: how often any span that long meets as much outside work.
                at = run.trips[(i * 7919) % len(run.trips)][0]
                placebo_hits += _outside(_shares(run.cpus, [(at, at + b - a)])) >= least
            slowest += len(spans)
        trips = sum(len(run.trips) for run in rounds)
        print(f"\n## {variant}: CPU taken\n")
        print(
            "| process | % of one core, whole window | µs per round trip "
            "| % of one core while the slowest 1 % were in flight |"
        )
        print("| --- | ---: | ---: | ---: |")
        names = sorted(set(whole) | set(slow), key=lambda w: -slow[w] / max(1, slow_ns))
        for who in names:
            overall, tail = 100 * whole[who] / whole_ns, 100 * slow[who] / max(1, slow_ns)
            if max(overall, tail) >= 0.5:
                per = "" if who == "idle" else f"{whole[who] / trips / 1e3:.1f}"
                print(f"| {who} | {overall:.1f} | {per} | {tail:.1f} |")
        print(f"\n{outside_hits} of the {slowest} slowest round trips overlapped at least "
              f"{args.outside_ms:g} ms of a process outside the run; as many spans as long "
              f"from other round trips' send times: {placebo_hits}.")  # fmt: skip


def _report_slow(args: argparse.Namespace, runs: dict[str, list[Run]]) -> None:
    """Redis' commands that took ``--slow-us`` or longer, per variant."""
    print(f"\n## Redis' commands of {args.slow_us} µs or longer (wall time, SLOWLOG)\n")
    print("| variant | command | calls | of them that long | share | median µs | max µs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for variant, rounds in runs.items():
        calls: Counter[str] = Counter()
        slow: dict[str, list[int]] = {}
        for run in rounds:
            calls += run.slow.calls
            for name, took in run.slow.slow_us.items():
                slow.setdefault(name, []).extend(took)
        for name in sorted(slow, key=lambda n: -len(slow[n])):
            took, ran = slow[name], max(calls[name], len(slow[name]))
            print(f"| {variant} | {name} | {ran:,} | {len(took):,} | {100 * len(took) / ran:.2f} % "
                  f"| {statistics.median(took):.0f} | {max(took)} |")  # fmt: skip


def _outside(took: Counter[str]) -> int:
    """ns of ``took`` (a span's shares) that processes outside the run ran."""
    return sum(ns for who, ns in took.items() if who not in _OWN)


# The run's own processes and the idle task; everything else is outside the run.
_OWN = {"idle", "hub node 1", "hub node 2", "redis", "load generator"}


def _percentiles(lengths: Iterable[int]) -> dict[str, float]:
    """The load generator's percentiles (ms) of round trip lengths (ns)."""
    out = percentiles(sorted(lengths))
    assert out is not None, "no round trip timed"
    return out


def _p99(run: Run) -> float:
    """The round's own p99, ms."""
    return _percentiles(r for _, r in run.trips)["p99"]


if __name__ == "__main__":
    main()
