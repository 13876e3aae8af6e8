"""What a session socket adds to the hubs' instructions per relayed message, in place.

Not a test: it prints a Markdown table, to be read, never asserted on. Needs valgrind.
Run from the repository root (about 5 minutes):

    .venv/bin/python bench/session_instructions.py [--rate 40] [--seconds 30] [--reps 2]

Two hub nodes with sessions on run under callgrind (valgrind's instruction counter)
beside a Redis, as ``bushub-bench --resume-only`` runs them, and one pair of the load
generator's sockets relays workload R's JSON task between them at ``--rate`` round
trips/s: 40 is each pair's rate in the bench's fixed phase, so acknowledgements ride
on messages and trims come as often as there (the hubs under valgrind keep up with
one pair, not fifty). Per variant, *plain* sockets or *session* sockets at both ends,
a job of ``--seconds`` and a short one are each counted alone (``callgrind_control
--zero`` before, ``--dump`` after): the difference between the two counts over the
difference in messages is what one more relayed message costs both nodes, without
the sockets' connecting and closing.

Instructions, not seconds: the count is the same whatever else the machine does (two
repetitions agree within 1 %), where CPU time per message moves by 10-20 % between
repetitions on a shared 2-core machine. Only user space is counted: the kernel's
part of a message (its system calls) is not in it, nor what a busier machine does to
the hubs' caches. ``PYTHONPATH=<checkout>/services:<checkout>/libs`` measures another
checkout's hub.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from busbench import cli, resume, sidebyside
from busbench.procs import Child, Procs, http_ready, wait_until

VARIANTS = ("on-plain", "on-session")
_LABELS = {"on-plain": "plain sockets", "on-session": "session sockets"}


def _hub(procs: Procs, node: str, redis_url: str, out: Path) -> Child:
    callgrind = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}/callgrind-{node}.%p",
        "--dump-instr=no",
    ]
    return procs.hub(node, redis_url, [], wrapper=callgrind)


def _control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, timeout=120)


def _counted(out: Path, label: str) -> int:
    """Both nodes' instructions in the dumps named ``label``."""
    total = 0
    for path in out.glob("callgrind-*"):
        text = path.read_text(errors="replace")
        if f"desc: Trigger: dump {label}\n" not in text:
            continue
        for line in text.splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0, help="round trips/s, one pair")
    parser.add_argument("--seconds", type=float, default=30.0, help="the long job's window")
    parser.add_argument("--reps", type=int, default=2)
    opts = parser.parse_args()
    args = cli.parse_args(
        [
            "--resume-only",
            "--resume-payloads",
            "task-json",
            "--pairs",
            "1",
            "--rate",
            str(opts.rate),
            "--warmup",
            "1",
        ]
    )
    out = Path(tempfile.mkdtemp(prefix="bushub-instructions-"))
    procs = Procs(out)
    jobs = cli.Jobs(args)
    per_message: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        redis = procs.redis()
        url = f"redis://127.0.0.1:{redis.port}/0"
        nodes = [_hub(procs, "on1", url, out), _hub(procs, "on2", url, out)]
        for node in nodes:
            # Under valgrind a node takes 20-60 s to start.
            wait_until(lambda n=node: http_ready(n.port), 300, node, "/readyz 200")
        pair = sidebyside.NodePair(nodes[0], nodes[1], redis)
        job = 0

        def run(variant: str, label: str, seconds: float, counted: bool) -> int:
            nonlocal job
            job += 1
            spec: dict[str, Any] = resume.job(jobs, args, variant, job, pair.urls, pair.pids)
            spec["phases"] = [
                {**p, "duration": seconds, "drain": 30.0}
                for p in spec["phases"]
                if p["kind"] == "fixed"
            ]
            if counted:
                for node in nodes:
                    _control("--zero", node.pid)
            result = cli.run_loadgen({**spec, "pids": pair.pids}, out, f"{variant}-{label}")
            if counted:
                for node in nodes:
                    _control(f"--dump={variant}-{label}", node.pid)
            counters = result["phases"][0]["counters"]
            if counters["ok"] != counters["sent"]:
                raise RuntimeError(f"{variant} {label}: {counters}")
            return 2 * int(counters["ok"])

        for rep in range(opts.reps):
            for variant in VARIANTS:
                print(f"[{time.strftime('%H:%M:%S')}] rep {rep + 1}: {variant}", file=sys.stderr)
                run(variant, f"warm{rep}", 3.0, counted=False)
                short = run(variant, f"short{rep}", 0.3, counted=True)
                long = run(variant, f"long{rep}", opts.seconds, counted=True)
                extra = _counted(out, f"{variant}-long{rep}")
                extra -= _counted(out, f"{variant}-short{rep}")
                per_message[variant].append(extra / (long - short))
    finally:
        procs.stop_all()
    plain, session = (statistics.median(per_message[v]) for v in VARIANTS)
    print(f"Instructions per relayed message, both nodes ({opts.rate:g} round trips/s, one pair):")
    print()
    print("| sockets | Ir/msg, per repetition | median |")
    print("| --- | ---: | ---: |")
    for variant in VARIANTS:
        reps = " / ".join(f"{v / 1000:.1f}k" for v in per_message[variant])
        median = statistics.median(per_message[variant])
        print(f"| {_LABELS[variant]} | {reps} | {median / 1000:.1f}k |")
    print(f"| session - plain | | {(session - plain) / 1000:+.1f}k ({session / plain:.2f}x) |")
    print(f"\ncallgrind dumps: {out}")


if __name__ == "__main__":
    main()
