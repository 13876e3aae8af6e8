"""``bushub-bench``: workload R against two hub nodes, the floor relay and the stock proxy.

The orchestrator (this process) builds the messages with the real serializers, starts
one ``redis-server``, two hub nodes and two floor-relay processes on loopback, and runs
the load generator (``busbench.loadgen``, a separate process) once per repetition per
server, alternating hub and floor (and the stock proxy for the one-pair comparison).
Then idle sockets, and optionally a py-spy profile of the hub under the fixed-rate
load. ``--resume`` adds the cost of sessions (``busbench.resume``), ``--operators`` that
of operators watching (``busbench.operators``). It prints a Markdown report; ``--json``
keeps the raw figures.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from busbench import idle, operators, report, resume, sidebyside, storm
from busbench.coupling import core_coupling
from busbench.coupling import describe as describe_coupling
from busbench.payloads import (
    FORMATS,
    PAYLOADS,
    Builder,
    encode_template,
)
from busbench.procs import (
    Child,
    Procs,
    die_with_parent,
    dropped_counters,
    http_ready,
    tcp_open,
    wait_until,
    worker_pids,
)
from busbench.report.operators import (
    operators_markdown,
    operators_sections,
    operators_summary,
)
from busclient.reconnecting import ReconnectPolicy
from busclient.session import ACK_DELAY, ACK_EVERY

MACHINE_NOTE = (
    "2 shared cores, noisy (other engineers' test runs share them): compare ratios "
    "measured side by side in one run, not absolute µs across runs or machines."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bushub-bench",
        description=(
            "Workload R: K agent pairs (a_i on hub node 1, b_i on node 2, b_i echoes to "
            "a_i) through two bushub nodes and one Redis, side by side with a floor relay "
            "and the stock WebSocketProxyServerAgent. Prints a Markdown report."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pairs", "-k", type=int, default=50, help="K: agent pairs")
    p.add_argument("--rate", type=float, default=2000.0, help="fixed rate, round trips/s overall")
    p.add_argument("--fixed-seconds", type=float, default=5.0, help="measured window, fixed rate")
    p.add_argument(
        "--inflight", type=int, default=4, help="messages in flight per pair at saturation"
    )
    p.add_argument("--sat-seconds", type=float, default=3.0, help="measured window, saturation")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before each window")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions (>= 3 for medians)")
    p.add_argument(
        "--payloads",
        default="task-json,task-msgpack,audio-json,audio-msgpack",
        help="payload-format combinations run on K pairs",
    )
    p.add_argument("--solo-rate", type=float, default=200.0, help="one-pair fixed rate, rt/s")
    p.add_argument("--solo-seconds", type=float, default=4.0, help="one-pair windows")
    p.add_argument("--no-stock", action="store_true", help="skip the stock-proxy baseline")
    p.add_argument(
        "--idle",
        type=_counts,
        default=[2000],
        help="idle agent sockets per server, even, <= 100000; a list (2000,10000) measures "
        "each count on fresh server processes",
    )
    p.add_argument("--idle-only", action="store_true", help="only the idle-connection measurement")
    p.add_argument(
        "--idle-ping",
        type=float,
        default=20.0,
        help="idle clients' keepalive ping interval and timeout, s (websockets' default, "
        "as the stock proxy keeps); 0 = no pings",
    )
    p.add_argument("--idle-window", type=float, default=20.0, help="idle quiet window, s")
    p.add_argument(
        "--idle-workers",
        type=int,
        default=1,
        help="the idle hub as one node of this many worker processes (bushub serve "
        "--workers): each holds its share of the sockets under its own descriptor limit",
    )
    p.add_argument(
        "--idle-hold",
        type=float,
        default=0.0,
        help="seconds the idle sockets stay open after settling, before the window",
    )
    p.add_argument(
        "--idle-per-addr",
        type=int,
        default=20000,
        help="idle sockets per loopback source address (127.0.0.1, 127.0.0.2, ...)",
    )
    p.add_argument(
        "--idle-per-loadgen",
        type=int,
        default=20000,
        help="idle sockets per load-generator process (lowered to fit RLIMIT_NOFILE)",
    )
    p.add_argument(
        "--idle-floor-max",
        type=int,
        default=20000,
        help="measure the floor relay idle only up to this many sockets",
    )
    p.add_argument(
        "--storm",
        type=lambda t: int(t.replace("_", "")),
        nargs="?",
        const=19_000,
        default=0,
        help="reconnect storm: N agent sockets on node 1 of three, node 1 SIGKILLed, the "
        "clients back through the two survivors with the reconnecting proxies' backoff "
        "(N even; given alone, 19,000: one process holds at most ~19,700 sockets here)",
    )
    p.add_argument("--storm-only", action="store_true", help="only the reconnect storm")
    policy = ReconnectPolicy()
    p.add_argument(
        "--storm-deadline",
        type=float,
        default=policy.max_elapsed,
        help="seconds a client keeps trying before giving up (the proxies' max_elapsed)",
    )
    p.add_argument(
        "--storm-initial-delay",
        type=float,
        default=policy.initial_delay,
        help="the first backoff ceiling, s (the proxies' initial_delay)",
    )
    p.add_argument(
        "--storm-max-delay",
        type=float,
        default=policy.max_delay,
        help="the backoff's cap, s (the proxies' max_delay)",
    )
    p.add_argument(
        "--storm-jitter",
        type=float,
        default=policy.jitter,
        help="backoff jitter: each wait is its ceiling times a random factor in "
        "(1 - jitter, 1]; 1 is full jitter (the proxies' jitter)",
    )
    p.add_argument(
        "--storm-pick",
        choices=("alternate", "random"),
        default="alternate",
        help="how a client picks a survivor, standing in for the load balancer: by its "
        "index (pairs split across the survivors) or at random on each attempt",
    )
    p.add_argument(
        "--storm-per-loadgen",
        type=int,
        default=10_000,
        help="storm sockets per load-generator process",
    )
    p.add_argument(
        "--storm-workers",
        type=int,
        default=1,
        help="worker processes of the node that is killed (its --workers): one process "
        "holds at most RLIMIT_NOFILE sockets; all of them get SIGKILL",
    )
    p.add_argument(
        "--storm-settle",
        type=float,
        default=5.0,
        help="seconds after the last client is back before the sockets are counted",
    )
    p.add_argument("--profile-only", action="store_true", help="only the py-spy profile")
    p.add_argument(
        "--resume",
        action="store_true",
        help="add the cost of sessions: workload R with sessions off, on with plain "
        "sockets and on with session sockets, side by side; then Redis memory and CPU "
        "per session",
    )
    p.add_argument("--resume-only", action="store_true", help="only the --resume measurement")
    p.add_argument(
        "--resume-payloads",
        default="task-json,audio-json",
        help="payload-format combinations of the resume workload",
    )
    p.add_argument(
        "--resume-sessions",
        type=int,
        default=1000,
        help="agents in the memory measurement (each with a plain partner); 0 = skip it",
    )
    p.add_argument(
        "--resume-messages",
        type=int,
        default=10,
        help="messages sent to each of them and never acknowledged",
    )
    p.add_argument(
        "--resume-ack-every",
        type=int,
        default=ACK_EVERY,
        help="session sockets acknowledge at least every this many messages (the proxy's)",
    )
    p.add_argument(
        "--resume-ack-delay",
        type=float,
        default=ACK_DELAY,
        help="... or once the oldest unacknowledged message is this many s old (the proxy's)",
    )
    p.add_argument(
        "--resume-away",
        type=float,
        default=2.0,
        help="seconds after the sockets close before the away sessions' memory is read",
    )
    p.add_argument(
        "--resume-control",
        choices=("on", "off"),
        default="on",
        help="also run sessions off at the fixed rate beside a burner as busy as what "
        "session sockets add to the machine (busbench.burner)",
    )
    p.add_argument(
        "--operators",
        action="store_true",
        help="add what operators watching costs: workload R with nobody watching, with a "
        "console polling /api/cluster and with a tap on an agent outside the workload, "
        "side by side",
    )
    p.add_argument("--operators-only", action="store_true", help="only the --operators measurement")
    p.add_argument(
        "--operators-payloads",
        default="task-json,audio-msgpack",
        help="payload-format combinations of the operators workload",
    )
    p.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="what the clients offer: deflate is what the stock proxy client's "
        "websockets.connect() offers; servers decide whether to accept",
    )
    p.add_argument(
        "--hub-args",
        default="",
        help="extra `bushub serve` flags for lever experiments, as one string: "
        "--hub-args='--queue-bytes 1000000'",
    )
    p.add_argument(
        "--workers",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: two hub nodes; 2: one hub node of two worker processes on one port "
        "(bushub serve --workers 2), its workers measured as node 1 and node 2 (pairs "
        "land on either worker, as the kernel spreads the sockets)",
    )
    p.add_argument(
        "--profile",
        choices=("auto", "on", "off"),
        default="auto",
        help="py-spy profile of both hub nodes under the fixed-rate JSON task load "
        "(auto: if py-spy is installed)",
    )
    p.add_argument("--profile-seconds", type=float, default=8.0, help="profiled window")
    p.add_argument(
        "--profile-native",
        action="store_true",
        help="add a second profile with py-spy --native (stops the process per sample; "
        "shows C frames: syscalls, uvloop, zlib)",
    )
    p.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    p.add_argument("--json", dest="json_out", help="write raw figures to this file")
    p.add_argument("--keep-logs", action="store_true", help="keep child logs (path printed)")
    args = p.parse_args(argv)
    if args.quick:
        args.reps = min(args.reps, 1)
        args.fixed_seconds = min(args.fixed_seconds, 1.5)
        args.sat_seconds = min(args.sat_seconds, 1.0)
        args.solo_seconds = min(args.solo_seconds, 1.0)
        args.warmup = min(args.warmup, 0.3)
        args.idle = [min(n, 300) for n in args.idle]
        args.idle_window = min(args.idle_window, 3.0)
        args.idle_hold = min(args.idle_hold, 1.0)
        args.profile_seconds = min(args.profile_seconds, 2.0)
        args.resume_sessions = min(args.resume_sessions, 100)
        args.resume_away = min(args.resume_away, 1.0)
    if not 1 <= args.pairs <= 2000:
        p.error("--pairs must be within 1..2000")
    if any(not 0 <= n <= 100_000 or n % 2 for n in args.idle):
        p.error("--idle: each count must be even (agent pairs) and within 0..100000")
    args.idle = [n for n in args.idle if n]
    if args.idle_window <= 0 or args.idle_hold < 0 or args.idle_ping < 0:
        p.error("--idle-window must be > 0, --idle-hold and --idle-ping >= 0")
    if not 1 <= args.idle_per_addr <= 28000 or args.idle_per_loadgen < 2:
        p.error("--idle-per-addr must be within 1..28000, --idle-per-loadgen >= 2")
    if args.idle and max(args.idle) > 254 * args.idle_per_addr:
        p.error("--idle: more than 254 source addresses needed; raise --idle-per-addr")
    if args.storm < 0 or args.storm % 2:
        p.error("--storm must be even (agent pairs) and >= 0")
    if args.storm_only and not args.storm:
        args.storm = 19_000
    if args.storm_workers < 1:
        p.error("--storm-workers must be >= 1")
    if args.storm_per_loadgen < 2 or args.storm_deadline <= 0 or not 0 <= args.storm_jitter <= 1:
        p.error("--storm-per-loadgen >= 2, --storm-deadline > 0, --storm-jitter within 0..1")
    if not 0 <= args.storm_initial_delay <= args.storm_max_delay:
        p.error("need 0 <= --storm-initial-delay <= --storm-max-delay")
    if args.reps < 1:
        p.error("--reps must be >= 1")
    args.combos = _combos(p, args.payloads, "--payloads")
    if args.resume_only:
        args.resume = True
    args.resume_combos = _combos(p, args.resume_payloads, "--resume-payloads")
    if args.operators_only:
        args.operators = True
    args.operators_combos = _combos(p, args.operators_payloads, "--operators-payloads")
    if not 0 <= args.resume_sessions <= 5000 or args.resume_messages < 1:
        p.error("--resume-sessions must be within 0..5000, --resume-messages >= 1")
    if args.workers > 1 and (args.profile == "on" or args.profile_only):
        p.error("--workers 2: the profile follows the two nodes' pids; use --profile off")
    if args.workers > 1:
        args.profile = "off"
    return args


def _combos(p: argparse.ArgumentParser, text: str, flag: str) -> list[str]:
    """``text``'s payload-format combinations; an unknown one ends the parse."""
    combos = sidebyside.combos(text)
    for combo in combos:
        payload, _, fmt = combo.partition("-")
        if payload not in PAYLOADS or fmt not in FORMATS:
            p.error(f"{flag}: unknown combination {combo!r}")
    return combos


def _counts(text: str) -> list[int]:
    try:
        return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None


# ---- jobs ----------------------------------------------------------------------


class Jobs:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.builder = Builder()

    def pair_set(
        self, name: str, fmt: str, a_names: list[str], b_names: list[str], url_a: str, url_b: str
    ) -> dict[str, Any]:
        templates = []
        for a, b in zip(a_names, b_names, strict=True):
            per = {}
            for payload in PAYLOADS:
                pairs = self.builder.pairs(payload, fmt, a, b)
                # The generator reads the sequence number at one offset per payload.
                if len({(req.offset, rep.offset) for req, rep in pairs}) != 1:
                    raise AssertionError(f"{payload}/{fmt}: template variants differ in layout")
                variants = [[encode_template(req), encode_template(rep)] for req, rep in pairs]
                per[payload] = variants
            templates.append(per)
        return {
            "name": name,
            "format": fmt,
            "a_names": a_names,
            "b_names": b_names,
            "url_a": url_a,
            "url_b": url_b,
            "templates": templates,
        }

    def _phases_main(self, formats_used: set[str]) -> list[dict[str, Any]]:
        a = self.args
        phases = []
        for combo in a.combos:
            payload, _, fmt = combo.partition("-")
            phases.append(
                {
                    "name": f"{combo}/fixed",
                    "set": fmt,
                    "payload": payload,
                    "kind": "fixed",
                    "rate": a.rate,
                    "warmup": a.warmup,
                    "duration": a.fixed_seconds,
                }
            )
            phases.append(
                {
                    "name": f"{combo}/saturation",
                    "set": fmt,
                    "payload": payload,
                    "kind": "saturation",
                    "inflight": a.inflight,
                    "warmup": a.warmup,
                    "duration": a.sat_seconds,
                }
            )
        return phases

    def _phases_solo(self) -> list[dict[str, Any]]:
        a = self.args
        return [
            {
                "name": "solo/fixed",
                "set": "solo",
                "payload": "task",
                "kind": "fixed",
                "rate": a.solo_rate,
                "warmup": a.warmup,
                "duration": a.solo_seconds,
            },
            {
                "name": "solo/saturation",
                "set": "solo",
                "payload": "task",
                "kind": "saturation",
                "inflight": a.inflight,
                "warmup": a.warmup,
                "duration": a.solo_seconds,
            },
        ]

    def relay_job(
        self, kind: str, rep: int, url1: str, url2: str, pids: dict[str, int]
    ) -> dict[str, Any]:
        """K pairs per format used, plus one solo JSON pair, on two relay nodes."""
        k = self.args.pairs
        tag = f"{kind[0]}{rep}"
        formats_used = {c.partition("-")[2] for c in self.args.combos}
        sets = []
        for fmt in FORMATS:
            if fmt not in formats_used:
                continue
            a_names = [f"a{i:03d}{tag}{fmt[0]}" for i in range(k)]
            b_names = [f"b{i:03d}{tag}{fmt[0]}" for i in range(k)]
            sets.append(self.pair_set(fmt, fmt, a_names, b_names, url1, url2))
        sets.append(self.pair_set("solo", "json", [f"s000{tag}j"], [f"t000{tag}j"], url1, url2))
        return {
            "kind": "pairs",
            "server": kind,
            "sets": sets,
            "phases": self._phases_main(formats_used) + self._phases_solo(),
            "pids": pids,
            "expect_registry": kind == "hub",
            "compression": self.args.compression,
        }

    def stock_job(self, rep: int, url: str, pids: dict[str, int]) -> dict[str, Any]:
        tag = f"s{rep}"
        sets = [self.pair_set("solo", "json", [f"s000{tag}j"], [f"t000{tag}j"], url, "")]
        return {
            "kind": "pairs",
            "server": "stock",
            "sets": sets,
            "phases": self._phases_solo(),
            "pids": pids,
            "expect_registry": True,
            "compression": self.args.compression,
        }

    def profile_job(
        self,
        url1: str,
        url2: str,
        pids: dict[str, int],
        profile_argv: list[list[str]],
        mode: str,
    ) -> dict[str, Any]:
        a = self.args
        k = a.pairs
        a_names = [f"a{i:03d}p{mode[0]}" for i in range(k)]
        b_names = [f"b{i:03d}p{mode[0]}" for i in range(k)]
        return {
            "kind": "pairs",
            "server": "hub",
            "sets": [self.pair_set("json", "json", a_names, b_names, url1, url2)],
            "phases": [
                {
                    "name": "profile/task-json/fixed",
                    "set": "json",
                    "payload": "task",
                    "kind": "fixed",
                    "rate": a.rate,
                    "warmup": a.warmup,
                    "duration": a.profile_seconds,
                    "profile": profile_argv,
                }
            ],
            "pids": pids,
            "expect_registry": True,
            "compression": a.compression,
        }


def job_budget(job: dict[str, Any]) -> float:
    """Seconds a load-generator job may take before it is killed."""
    seconds = 60.0
    for ph in job["phases"]:
        seconds += ph["warmup"] + ph["duration"] + ph.get("drain", 5.0) + 5
    return seconds


def run_loadgen(job: dict[str, Any], work: Path, label: str) -> dict[str, Any]:
    job_path = work / f"job-{label}.json"
    out_path = work / f"result-{label}.json"
    job_path.write_text(json.dumps(job))
    err_path = work / f"loadgen-{label}.log"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "busbench.loadgen", str(job_path), str(out_path)],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # the parent is single-threaded
        )
        try:
            proc.wait(job_budget(job))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"load generator job {label} timed out; log: {err_path}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        tail = err_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"load generator job {label} failed ({proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def log(msg: str) -> None:
    print(f"[bushub-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_nofile(wanted: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    note = ""
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            note = f"could not raise RLIMIT_NOFILE: {exc}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted and not note:
        note = f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} descriptors needed"
    return {"soft": soft, "hard": hard, "wanted": wanted, "note": note}


def versions() -> str:
    names = ("pipecat-ai-subagents", "pipecat-ai", "websockets", "uvicorn", "redis", "uvloop")
    out = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{name} {metadata.version(name)}")
    try:
        redis_v = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=5
        ).stdout.split()
        out.append(next(w for w in redis_v if w.startswith("v=")).replace("v=", "redis-server "))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    return ", ".join(out)


def code_version() -> str:
    """The commit the hub runs from, and whether its code has uncommitted changes.

    The checkout is the one ``bushub`` is imported from (``PYTHONPATH`` may point the
    bench at another checkout's hub), else the bench's own."""
    spec = importlib.util.find_spec("bushub")
    origin = spec.origin if spec is not None else None
    root = Path(origin or __file__).resolve().parents[2]

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *cmd], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "services", "libs/buswire")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not commit:
        return "unknown (not a git checkout)"
    n = len(dirty.splitlines())
    return f"commit {commit}" + (
        f", with {n} uncommitted change(s) in services/ and libs/buswire/" if n else ""
    )


def find_pyspy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


# ---- the run ---------------------------------------------------------------------


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    nofile = raise_nofile(max(max([*args.idle, args.storm]) + idle.FD_MARGIN, 4096))
    work = Path(tempfile.mkdtemp(prefix="bushub-bench-"))
    procs = Procs(work)
    jobs = Jobs(args)
    pyspy = find_pyspy() if args.profile != "off" else None
    if (args.profile == "on" or args.profile_only) and pyspy is None:
        raise SystemExit("--profile on: py-spy not found (pip install py-spy)")
    # Before any server starts: the machine as the measured processes will find it.
    coupling = core_coupling()
    out: dict[str, Any] = {
        "command": shlex.join(["bushub-bench", *argv]),
        "config": {
            k: v for k, v in vars(args).items() if k not in ("json_out",) and not callable(v)
        },
        "machine": f"{MACHINE_NOTE} {describe_coupling(coupling)}",
        "core_coupling": coupling,
        "host": (
            f"{platform.machine()}, os.cpu_count()={os.cpu_count()}, "
            f"Python {platform.python_version()}"
        ),
        "versions": versions(),
        "code": code_version(),
        "nofile": nofile,
        "runs": [],
        "idle": [],
        "idle_skipped": [],
        "storm": [],
        "profiles": [],
        "logs": str(work),
    }
    ok = False
    try:
        redis = procs.redis()
        extra = shlex.split(args.hub_args)
        only = (
            args.idle_only
            or args.storm_only
            or args.profile_only
            or args.resume_only
            or args.operators_only
        )
        if not (args.idle_only or args.storm_only or args.resume_only or args.operators_only):
            _relay_runs(args, jobs, procs, redis, extra, work, out, pyspy)
        # The relay nodes are stopped by now: the idle windows count every command
        # Redis serves and must see the idle server alone.
        if args.idle and (not only or args.idle_only):
            _idle_runs(args, procs, redis, extra, work, out)
        if args.storm and (not only or args.storm_only):
            _storm_run(args, procs, extra, work, out)
        if args.resume and (not only or args.resume_only):
            out["resume"] = resume.run(args, jobs, procs, extra, work, log, run_loadgen)
        if args.operators and (not only or args.operators_only):
            out["operators"] = operators.run(args, jobs, procs, extra, work, log, run_loadgen)
        if not redis.alive:
            raise RuntimeError(f"redis died during the run:\n{redis.log_tail()}")
        ok = True
    finally:
        procs.stop_all()
        out["elapsed_s"] = time.monotonic() - started
        if ok and not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
            out["logs"] = None
    return out


def _relay_runs(
    args: argparse.Namespace,
    jobs: Jobs,
    procs: Procs,
    redis: Child,
    extra: list[str],
    work: Path,
    out: dict[str, Any],
    pyspy: str | None,
) -> None:
    """Two hub nodes and two floor processes: the repetitions, then the profiles."""
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    if args.workers > 1:
        # One node, two workers: sockets of both sides go to the one port.
        hub1 = hub2 = procs.hub("n1", redis_url, extra, workers=args.workers)
    else:
        hub1, hub2 = procs.hub("n1", redis_url, extra), procs.hub("n2", redis_url, extra)
    floor1, floor2 = procs.floor("floor-1", redis_url), procs.floor("floor-2", redis_url)
    for hub in dict.fromkeys((hub1, hub2)):
        wait_until(lambda h=hub: http_ready(h.port), 30, hub, "/readyz 200")
    hub_pids = _hub_pids(hub1, hub2, args.workers)
    for fl in (floor1, floor2):
        wait_until(lambda f=fl: tcp_open(f.port), 30, fl, "listening port")
    out["hub_argv"] = shlex.join(hub1.argv)
    url = "ws://127.0.0.1:{}".format
    servers = {
        "hub": (hub1, hub2),
        "floor": (floor1, floor2),
    }
    for rep in range(0 if args.profile_only else args.reps):
        for kind in ("hub", "floor"):
            n1, n2 = servers[kind]
            pids = {"node1": n1.pid, "node2": n2.pid, "redis": redis.pid}
            if kind == "hub":
                pids.update(hub_pids)
            job = jobs.relay_job(kind, rep, url(n1.port), url(n2.port), pids)
            drops0 = _drops(kind, n1, n2)
            log(f"rep {rep + 1}/{args.reps}: {kind}")
            result = run_loadgen(job, work, f"{kind}-{rep}")
            result.update(server=kind, rep=rep, drops=_diff(_drops(kind, n1, n2), drops0))
            out["runs"].append(result)
        if not args.no_stock:
            stock = procs.stock(f"stock-{rep}")
            wait_until(lambda s=stock: http_ready(s.port), 60, stock, "/readyz 200")
            log(f"rep {rep + 1}/{args.reps}: stock proxy")
            pids = {"node1": stock.pid, "redis": redis.pid}
            result = run_loadgen(jobs.stock_job(rep, url(stock.port), pids), work, f"stock-{rep}")
            result.update(server="stock", rep=rep, drops={})
            out["runs"].append(result)
            procs.stop(stock)
    if pyspy is not None:
        out["profiles"] = []
        for native in (False, True) if args.profile_native else (False,):
            log(f"py-spy profile ({'native' if native else 'Python'} frames) of both hubs")
            out["profiles"].append(
                _profile(args, jobs, work, pyspy, (hub1, hub2, redis), url, native)
            )
    if _hub_pids(hub1, hub2, args.workers) != hub_pids:
        raise RuntimeError(f"a worker of {hub1.name} restarted during the run")
    for child in dict.fromkeys((hub1, hub2, floor1, floor2)):
        if not child.alive:
            raise RuntimeError(f"{child.name} died during the run:\n{child.log_tail()}")
        procs.stop(child)


def _idle_runs(
    args: argparse.Namespace,
    procs: Procs,
    redis: Child,
    extra: list[str],
    work: Path,
    out: dict[str, Any],
) -> None:
    """Each count on fresh server processes: the hub, and the floor where it can take it."""
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_loadgen = min(args.idle_per_loadgen, max(2, soft - idle.FD_MARGIN))
    m = 0
    for count in args.idle:
        # The hub accepts permessage-deflate and keeps a zlib context per socket; the
        # floor never negotiates it. With deflate offered, the hub is measured twice.
        idle_runs = [("hub", args.compression), ("floor", args.compression)]
        if args.compression == "deflate":
            idle_runs.insert(1, ("hub", "none"))
        for kind, compression in idle_runs:
            label = kind if compression == args.compression else f"{kind}, no deflate"
            plan = idle.IdlePlan(
                count=count,
                ping=args.idle_ping,
                window=args.idle_window,
                hold=args.idle_hold,
                per_loadgen=per_loadgen,
                per_addr=args.idle_per_addr,
                compression=compression,
                tag=f"x{m}",
            )
            m += 1
            reason = idle.fd_shortfall(plan, args.idle_workers if kind == "hub" else 1)
            if kind == "floor" and count > args.idle_floor_max:
                reason = f"above --idle-floor-max {args.idle_floor_max:,}"
            if reason:
                log(f"idle sockets: {count:,} on {label} skipped: {reason}")
                out["idle_skipped"].append(
                    {"server": kind, "label": label, "count": count, "reason": reason}
                )
                continue
            # A fresh process each time: memory freed by an earlier measurement
            # stays in the process and would be reused, hiding the growth.
            if kind == "hub":
                cap = ["--max-connections", str(max(20_000, count + 100))]
                node = procs.hub(f"idle{m}", redis_url, cap + extra, workers=args.idle_workers)
                wait_until(lambda c=node: http_ready(c.port), 30, node, "/readyz 200")
            else:
                node = procs.floor(f"floor-idle{m}", redis_url)
                wait_until(lambda c=node: tcp_open(c.port), 30, node, "listening port")
            log(
                f"idle sockets: {count:,} on {label} (a fresh process; "
                f"{len(plan.shares())} load generator(s), {len(plan.addresses())} source "
                "address(es))"
            )
            result = idle.measure(
                plan,
                f"ws://127.0.0.1:{node.port}",
                node.pid,
                (redis.pid, redis.port),
                work,
                log,
            )
            result.update(server=kind, label=label, compression=compression, alive_after=node.alive)
            if kind == "hub":
                result["hub_argv"] = shlex.join(node.argv)
            out["idle"].append(result)
            procs.stop(node)


def _storm_run(
    args: argparse.Namespace, procs: Procs, extra: list[str], work: Path, out: dict[str, Any]
) -> None:
    """Three fresh hub nodes on a fresh Redis; node 1 holds the sockets and is killed."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = storm.StormPlan(
        count=args.storm,
        per_loadgen=min(args.storm_per_loadgen, max(2, soft - idle.FD_MARGIN)),
        per_addr=args.idle_per_addr,
        compression=args.compression,
        ping=args.idle_ping,
        pick=args.storm_pick,
        policy={
            **storm.proxy_policy(),
            "initial_delay": args.storm_initial_delay,
            "max_delay": args.storm_max_delay,
            "jitter": args.storm_jitter,
            "max_elapsed": args.storm_deadline,
        },
        settle=args.storm_settle,
    )
    # The killed node holds them over its workers, and each survivor half of them in
    # its one process: the larger share of a process is what must fit.
    reason = idle.fd_shortfall(plan.idle_plan(), min(args.storm_workers, 2))
    if reason:
        log(f"reconnect storm: {plan.count:,} skipped: {reason}")
        out["storm_skipped"] = reason
        return
    # A Redis of its own: the storm's Redis figures see only the storm.
    redis = procs.redis()
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    cap = ["--max-connections", str(max(20_000, plan.count + 100))]
    nodes = [
        procs.hub(f"n{k}", redis_url, cap + extra, workers=args.storm_workers if k == 1 else 1)
        for k in (1, 2, 3)
    ]
    for node in nodes:
        wait_until(lambda c=node: http_ready(c.port), 30, node, "/readyz 200")
    log(
        f"reconnect storm: {plan.count:,} sockets on n1 ({args.storm_workers} process(es), "
        f"{len(plan.idle_plan().shares())} load generator(s)), then SIGKILL n1"
    )
    result = storm.measure(plan, nodes[0], nodes[1:], (redis.pid, redis.port), work, log)
    result["hub_argv"] = shlex.join(nodes[1].argv)
    result["doomed_workers"] = args.storm_workers
    result["redis_alive"] = redis.alive
    out["storm"].append(result)
    for child in (*nodes, redis):
        procs.stop(child)


def _hub_pids(hub1: Any, hub2: Any, workers: int) -> dict[str, int]:
    """The processes measured as node 1 and node 2: the nodes, or one node's workers
    (its supervisor only waits, and is not measured)."""
    if workers == 1:
        return {"node1": hub1.pid, "node2": hub2.pid}
    found: list[int] = []
    for _ in range(100):
        found = worker_pids(hub1.pid)
        if len(found) == workers:
            break
        time.sleep(0.1)
    if len(found) != workers:
        raise RuntimeError(f"{hub1.name}: {len(found)} worker processes, not {workers}")
    return {"node1": found[0], "node2": found[1]}


def _drops(kind: str, n1: Any, n2: Any) -> dict[str, float]:
    if kind != "hub":
        return {}
    total: dict[str, float] = {}
    for node in dict.fromkeys((n1, n2)):  # one node when it has two workers
        for reason, value in dropped_counters(node.port).items():
            total[reason] = total.get(reason, 0.0) + value
    return total


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def _profile(args, jobs, work, pyspy, nodes, url, native: bool) -> dict[str, Any]:
    hub1, hub2, redis = nodes
    duration = max(1, round(args.profile_seconds))
    mode = "native" if native else "python"
    outs = [work / f"pyspy-{mode}-n1.txt", work / f"pyspy-{mode}-n2.txt"]
    argv = [
        [
            pyspy,
            "record",
            "--pid",
            str(hub.pid),
            "--duration",
            str(duration),
            "--rate",
            "200",
            "--format",
            "raw",
            "--function",
            # --native needs the process stopped while sampling; Python frames do not.
            "--native" if native else "--nonblocking",
            "--output",
            str(path),
        ]
        for hub, path in zip((hub1, hub2), outs, strict=True)
    ]
    pids = {"node1": hub1.pid, "node2": hub2.pid, "redis": redis.pid}
    job = jobs.profile_job(url(hub1.port), url(hub2.port), pids, argv, mode)
    result = run_loadgen(job, work, f"profile-{mode}")
    phase = result["phases"][0]
    stacks: list[str] = []
    for path in outs:
        if path.exists():
            stacks.extend(path.read_text(errors="replace").splitlines())
    table, samples, idle = report.profile_table(stacks, 20)
    return {
        "mode": mode,
        "phase": phase,
        "tool": (
            f"py-spy {_pyspy_version(pyspy)}, 200 Hz, "
            f"{'--native' if native else '--nonblocking'}, --function, both nodes merged"
        ),
        "table": table,
        "project": report.project_table(stacks, 15),
        "stacks": stacks,
        "samples": samples,
        "idle_samples": idle,
        "errors": phase.get("profile_errors", []),
    }


def _pyspy_version(pyspy: str) -> str:
    try:
        return subprocess.run(
            [pyspy, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    out = run(args, argv)
    out["summary"] = report.summarise(out)
    if out.get("operators"):
        out["summary"]["operators"] = operators_summary(out["operators"])
    text = render(out)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1, default=str))
    print(text)


def render(out: dict[str, Any]) -> str:
    """The report; the operators measurement's part after the rest, its own page with
    ``--operators-only``."""
    ops, c = out["summary"].get("operators"), out["config"]
    if ops is None:
        return report.markdown(out)
    if c.get("operators_only") and not c.get("resume_only"):
        return operators_markdown(out)
    rest = report.markdown({**out, "logs": None}).rstrip("\n").split("\n")
    lines = [*rest, "", *(line for block in operators_sections(ops, c) for line in (block, ""))]
    if out.get("logs"):
        lines.append(f"Child logs kept in `{out['logs']}`.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
