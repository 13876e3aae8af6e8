"""Benchmark outputs shaped like the ones ``bushub-bench`` collects, one per kind of run.

Each builder returns the ``out`` dict of ``busbench.cli.run`` (before the summary is
added): load-generator phase results, idle-socket results and profiles with the keys
``busbench.loadgen`` and ``busbench.cli`` write. The figures follow the run recorded in
BENCHMARKS.md; each scenario bends them to reach the report's other branches (flags,
missing measurements, runs that skip parts).
"""

from typing import Any

from busbench import report

TASK_JSON, TASK_MSGPACK = 263, 216
AUDIO_JSON, AUDIO_MSGPACK = 1397, 1068
ALL_COMBOS = ["task-json", "task-msgpack", "audio-json", "audio-msgpack"]

# (rt/s, server µs/msg, Redis µs/msg, loadgen µs/msg, (p50, p99, p999) ms, send lag p99
# ms, request bytes, server bytes written per relayed message)
Figures = tuple[float, float, float, float, tuple[float, float, float], float, int, float]

HUB: dict[str, Figures] = {
    "task-json/fixed": (2000.0, 124.5, 20.0, 86.0, (0.91, 2.87, 5.54), 1.84, TASK_JSON, 597),
    "task-json/saturation": (10622.6, 42.2, 3.1, 31.2, (18.46, 29.22, 35.1), 0.0, TASK_JSON, 590),
    "task-msgpack/fixed": (2000.0, 137.0, 22.0, 92.0, (1.01, 2.12, 5.30), 1.82, TASK_MSGPACK, 501),
    "task-msgpack/saturation": (11281.0, 40.5, 2.7, 28.1, (17.64, 27.59, 31.0), 0.0, 216, 495),
    "audio-json/fixed": (2000.0, 141.6, 22.5, 94.6, (1.06, 2.77, 7.10), 1.70, AUDIO_JSON, 2866),
    "audio-json/saturation": (9125.0, 51.3, 3.8, 33.2, (22.07, 33.47, 40.2), 0.0, 1397, 2850),
    "audio-msgpack/fixed": (2000.0, 142.5, 21.5, 91.5, (0.98, 2.38, 6.42), 1.68, 1068, 2210),
    "audio-msgpack/saturation": (9904.0, 47.8, 3.2, 32.0, (20.19, 32.24, 38.0), 0.0, 1068, 2200),
    "solo/fixed": (200.0, 262.8, 30.1, 120.0, (0.87, 1.49, 3.84), 1.20, TASK_JSON, 610),
    "solo/saturation": (5715.0, 75.7, 4.0, 44.0, (0.66, 1.10, 2.30), 0.0, TASK_JSON, 600),
}
FLOOR: dict[str, Figures] = {
    "task-json/fixed": (2000.0, 237.0, 21.5, 77.5, (1.35, 2.90, 4.34), 1.84, TASK_JSON, 575),
    "task-json/saturation": (5237.5, 123.8, 9.5, 35.3, (38.20, 61.17, 70.0), 0.0, TASK_JSON, 570),
    "task-msgpack/fixed": (2000.0, 223.6, 19.5, 78.5, (1.13, 2.98, 4.26), 1.81, TASK_MSGPACK, 481),
    "task-msgpack/saturation": (5655.0, 113.1, 9.1, 31.2, (35.67, 52.2, 60.0), 0.0, 216, 478),
    "audio-json/fixed": (2000.0, 261.4, 23.5, 80.5, (1.43, 5.58, 7.47), 1.81, AUDIO_JSON, 2844),
    "audio-json/saturation": (4390.0, 146.7, 11.8, 41.4, (45.22, 75.22, 80.0), 0.0, 1397, 2830),
    "audio-msgpack/fixed": (2000.0, 275.1, 23.0, 84.0, (1.64, 4.42, 6.79), 1.60, 1068, 2186),
    "audio-msgpack/saturation": (4598.0, 157.7, 12.0, 38.4, (41.7, 74.1, 79.0), 0.0, 1068, 2180),
    "solo/fixed": (200.0, 438.0, 31.0, 118.0, (1.13, 1.74, 2.16), 1.30, TASK_JSON, 590),
    "solo/saturation": (2573.0, 244.0, 6.0, 52.0, (1.50, 2.40, 3.10), 0.0, TASK_JSON, 585),
}
STOCK: dict[str, Figures] = {
    "solo/fixed": (200.0, 206.5, 0.0, 110.0, (0.59, 1.00, 3.88), 1.10, TASK_JSON, 420),
    "solo/saturation": (5076.0, 98.3, 0.0, 40.0, (0.78, 1.30, 2.90), 0.0, TASK_JSON, 415),
}
# Repetitions differ a little, as real ones do; the medians land on the middle one.
REP_SPREAD = (1.0, 1.04, 0.95)


def counters(sent: int, **errors: int) -> dict[str, int]:
    """The load generator's ``Counters`` as it dumps them."""
    lost = errors.get("lost", 0)
    c = {
        "sent": sent,
        "ok": sent - sum(errors.values()),
        "corrupt": 0,
        "duplicate": 0,
        "late": 0,
        "unexpected": 0,
        "registry": 0,
        "lost": lost,
        "bad_request": 0,
        "closed": 0,
    }
    c.update(errors)
    return c


def phase(
    name: str,
    figures: Figures,
    *,
    spread: float = 1.0,
    server_procs: tuple[str, ...] = ("node1", "node2"),
    window_s: float | None = None,
    others_cores: float = 0.01,
    loadgen_cores: float | None = None,
    errors: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One phase result as ``busbench.loadgen`` returns it, built back from its figures."""
    rt_per_s, server_us, redis_us, loadgen_us, rtt, lag_p99, req_bytes, writes = figures
    kind = name.rpartition("/")[2]
    if window_s is None:
        window_s = {"fixed": 5.0, "saturation": 3.0}[kind]
    rt_per_s *= 1 / spread if kind == "saturation" else 1.0
    completed = round(rt_per_s * window_s)
    relayed = 2 * completed
    server_s = server_us * spread * relayed / 1e6
    cpu = {p: server_s / len(server_procs) for p in server_procs}
    cpu["redis"] = redis_us * relayed / 1e6
    cpu["loadgen"] = (
        loadgen_cores * window_s if loadgen_cores is not None else loadgen_us * relayed / 1e6
    )
    cpu_sys = {p: s * 0.15 for p, s in cpu.items()}
    ours = sum(cpu.values())
    busy_s = ours + others_cores * window_s
    io = {p: [int(writes * relayed / len(server_procs) * 0.9), 0] for p in server_procs}
    for p in server_procs:
        io[p][1] = int(writes * relayed / len(server_procs))
    io["redis"] = [int(writes * relayed * 0.4), int(writes * relayed * 0.3)]
    p50, p99, p999 = (v * spread for v in rtt)
    return {
        "name": name,
        "set": "solo" if name.startswith("solo/") else name.partition("-")[2].partition("/")[0],
        "payload": name.partition("-")[0].partition("/")[0],
        "kind": kind,
        "pairs": 1 if name.startswith("solo/") else 50,
        "rate": (200.0 if name.startswith("solo/") else 2000.0) if kind == "fixed" else None,
        "inflight": 4 if kind == "saturation" else None,
        "window_s": window_s,
        "completed": completed,
        "rt_per_s": completed / window_s,
        "relayed": relayed,
        "cpu_s": cpu,
        "cpu_sys_s": cpu_sys,
        "machine_s": {
            "user": busy_s * 0.8,
            "nice": 0.0,
            "system": busy_s * 0.2,
            "idle": max(0.0, 2 * window_s - busy_s),
            "iowait": 0.0,
            "irq": 0.0,
            "softirq": 0.08 * window_s,
            "steal": 0.004 * window_s,
        },
        "io_bytes": io,
        "rtt_ms": {
            "p50": p50,
            "p90": (p50 + p99) / 2,
            "p99": p99,
            "p999": p999,
            "max": p999 * 1.3,
            "mean": p50 * 1.1,
        },
        "rtt_samples": completed,
        "send_lag_ms": (
            {
                "p50": 0.4,
                "p90": 1.0,
                "p99": lag_p99,
                "p999": lag_p99 * 2,
                "max": lag_p99 * 3,
                "mean": 0.5,
            }
            if kind == "fixed"
            else None
        ),
        "counters": counters(completed, **(errors or {})),
        "request_bytes": req_bytes,
        "reply_bytes": req_bytes,
        "profile_errors": [],
    }


def config(**changes: Any) -> dict[str, Any]:
    """``vars(args)`` of ``bushub-bench --idle 10000 --profile-native`` with ``changes``."""
    c = {
        "pairs": 50,
        "rate": 2000.0,
        "fixed_seconds": 5.0,
        "inflight": 4,
        "sat_seconds": 3.0,
        "warmup": 0.5,
        "reps": 3,
        "payloads": "task-json,task-msgpack,audio-json,audio-msgpack",
        "solo_rate": 200.0,
        "solo_seconds": 4.0,
        "no_stock": False,
        "idle": 10000,
        "idle_only": False,
        "profile_only": False,
        "compression": "deflate",
        "hub_args": "",
        "profile": "auto",
        "profile_seconds": 8.0,
        "profile_native": True,
        "quick": False,
        "keep_logs": False,
        "combos": list(ALL_COMBOS),
    }
    c.update(changes)
    return c


def relay_run(
    server: str,
    rep: int,
    phases: list[dict[str, Any]],
    extensions: str | None = None,
    drops: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One load-generator job on one server, as ``cli.run`` appends it to ``runs``."""
    return {
        "phases": phases,
        "connect_s": 0.82,
        "extensions": extensions,
        "server": server,
        "rep": rep,
        "drops": drops or {},
    }


def phases_of(
    table: dict[str, Figures], combos: list[str], rep: int, **kw: Any
) -> list[dict[str, Any]]:
    names = [f"{c}/{kind}" for c in combos for kind in ("fixed", "saturation")]
    names += ["solo/fixed", "solo/saturation"]
    return [phase(n, table[n], spread=REP_SPREAD[rep % 3], **kw) for n in names if n in table]


def idle_result(
    server: str,
    label: str,
    compression: str,
    count: int,
    kb_per_conn: float,
    *,
    opened: int | None = None,
    still_open: int | None = None,
    errors: dict[str, int] | None = None,
    closed_by_server: dict[str, int] | None = None,
    alive_after: bool = True,
    rss_before_kb: int = 71782,
    us_per_sock_s: float | None = None,
    cmds_per_sock_s: float | None = None,
    hold_s: float = 0.0,
) -> dict[str, Any]:
    """An idle-socket measurement's result, with what ``cli.run`` adds to it."""
    opened = count if opened is None else opened
    if us_per_sock_s is None:
        us_per_sock_s = 1.6 if server == "hub" else 0.9
    if cmds_per_sock_s is None:
        cmds_per_sock_s = 0.75 if server == "hub" else 0.0
    wall = 20.0
    commands = round(cmds_per_sock_s * opened * wall)
    by_command = (
        {"evalsha": commands // 3, "set": commands // 3, "get": commands - 2 * (commands // 3)}
        if commands
        else {}
    )
    return {
        "count": count,
        "opened": opened,
        "still_open": opened if still_open is None else still_open,
        "closed_by_server": closed_by_server or {},
        "errors": errors or {},
        "open_s": 13.6 * count / 10000,
        "rss_before_kb": {"server": rss_before_kb, "redis": 9120},
        "rss_after_kb": {
            "server": rss_before_kb + round(kb_per_conn * opened),
            "redis": 9120 + opened // 9,
        },
        "rss_end_kb": {
            "server": rss_before_kb + round(kb_per_conn * opened) + 40,
            "redis": 9120 + opened // 9,
        },
        "nofile": {"soft": 20000, "hard": 20000, "wanted": count + 256},
        "loadgens": -(-count // 20000),
        "source_addresses": [f"127.0.0.{k + 1}" for k in range(-(-count // 20000))],
        "ping_interval": 20.0,
        "hold_s": hold_s,
        "settle_s": max(2.0, min(15.0, count / 5000)),
        "window": {
            "wall_s": wall,
            "server_cpu_s": us_per_sock_s * opened * wall / 1e6,
            "redis_proc_cpu_s": 0.002 * commands / 1000,
            "loadgen_cpu_s": 2.5 * opened * wall / 1e6,
            "machine_s": {"user": 3.0, "nice": 0.0, "system": 1.0, "idle": 36.0, "softirq": 0.1},
            "redis": {
                "commands": commands,
                "cpu_s": 0.002 * commands / 1000,
                "by_command": by_command,
                "keys_after": f"keys={2 * opened},expires={2 * opened},avg_ttl=7300",
                "clients_after": 67,
            },
        },
        "server": server,
        "label": label,
        "compression": compression,
        "alive_after": alive_after,
    }


def _frame(func: str, path: str, line: int | None = None) -> str:
    return f"{func} ({path}:{line})" if line is not None else f"{func} ({path})"


LOOP = [
    _frame("<module>", "/work/main/services/bushub/__main__.py", 1),
    _frame("main", "/work/main/services/bushub/cli.py", 60),
    _frame("run", "/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/runners.py", 190),
    _frame("Runner.run", "asyncio/runners.py", 86),
]
SEND = [*LOOP, _frame("Hub.sent", "/work/main/services/bushub/hub.py", 550)]
PUBLISH = [*LOOP, _frame("Publisher.publish", "/work/main/services/bushub/publisher.py", 117)]
PY_STACKS = [
    ";".join(LOOP) + " 480",
    ";".join(
        [*SEND, _frame("HubWebSocketProtocol.send_frame", "/x/services/bushub/wsprotocol.py", 185)]
    )
    + " 79",
    ";".join([*PUBLISH, _frame("_Connection.flush", "/x/services/bushub/broker/resp.py", 209)])
    + " 69",
    ";".join(
        [*LOOP, _frame("Frame.parse", "/v/lib/python3.11/site-packages/websockets/frames.py", 202)]
    )
    + " 29",
    ";".join([*SEND, _frame("envelope_of", "/work/main/libs/buswire/codec.py", 97)]) + " 15",
    ";".join([*PUBLISH, _frame("unpack_relay", "/work/main/libs/buswire/relayframe.py", 38)])
    + " 11",
    ";".join(SEND) + " 16",
    ";".join(PUBLISH) + " 12",
    "",
    "garbage line without a count",
]
NATIVE_STACKS = [
    *PY_STACKS[:6],
    ";".join([*LOOP, _frame("epoll_wait", "libc.so.6")]) + " 900",
    ";".join([*LOOP, "0x7f3a2c1b2e40", _frame("__libc_sendto", "libc.so.6")]) + " 120",
    ";".join([*PUBLISH, _frame("deflate", "libz.so.1")]) + " 33",
]


def profile(native: bool, stacks: list[str], errors: list[str] | None = None) -> dict[str, Any]:
    """What ``cli._profile`` keeps of one py-spy profile."""
    mode = "native" if native else "python"
    table, samples, idle = report.profile_table(stacks, 20)
    ph = phase("profile/task-json/fixed", HUB["task-json/fixed"], window_s=8.0)
    ph["profile_errors"] = errors or []
    return {
        "mode": mode,
        "phase": ph,
        "tool": (
            f"py-spy 0.4.3, 200 Hz, {'--native' if native else '--nonblocking'}, "
            "--function, both nodes merged"
        ),
        "table": table,
        "project": report.project_table(stacks, 15),
        "stacks": stacks,
        "samples": samples,
        "idle_samples": idle,
        "errors": ph["profile_errors"],
    }


def header(**changes: Any) -> dict[str, Any]:
    """The keys ``cli.run`` fills before any job runs, and the ones it adds after."""
    out = {
        "command": "bushub-bench --idle 10000 --profile-native --json /tmp/full.json",
        "config": config(),
        "machine": (
            "2 shared cores, noisy (other engineers' test runs share them): compare ratios "
            "measured side by side in one run, not absolute µs across runs or machines."
        ),
        "host": "x86_64, os.cpu_count()=2, Python 3.11.7",
        "versions": (
            "pipecat-ai-subagents 0.6.0, pipecat-ai 1.14.0, websockets 15.0.1, uvicorn 0.54.0, "
            "redis 8.1.0, uvloop 0.23.0, redis-server 7.0.15"
        ),
        "code": "commit 896a8f0",
        "nofile": {"soft": 20000, "hard": 20000, "wanted": 11024, "note": ""},
        "runs": [],
        "idle": [],
        "idle_skipped": [],
        "profiles": [],
        "logs": None,
        "hub_argv": (
            "/work/main/.venv/bin/python -m bushub serve --port 43441 --node-id n1 --redis-url "
            "redis://127.0.0.1:57089/0 --log-level warning --rate-messages 0 --rate-bytes 0"
        ),
        "elapsed_s": 397.3,
    }
    out.update(changes)
    return out


STOCK_DEFLATE = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"


def full_run() -> dict[str, Any]:
    """The default run with 10,000 idle sockets and both profiles, on a quiet machine."""
    out = header()
    for rep in range(3):
        out["runs"].append(relay_run("hub", rep, phases_of(HUB, ALL_COMBOS, rep)))
        out["runs"].append(relay_run("floor", rep, phases_of(FLOOR, ALL_COMBOS, rep)))
        stock = phases_of(STOCK, [], rep, server_procs=("node1",))
        out["runs"].append(relay_run("stock", rep, stock, STOCK_DEFLATE))
    out["idle"] = [
        idle_result("hub", "hub", "deflate", 10000, 12.1),
        idle_result("hub", "hub, no deflate", "none", 10000, 12.3),
        idle_result("floor", "floor", "deflate", 10000, 13.9, rss_before_kb=37580),
    ]
    out["profiles"] = [
        profile(False, PY_STACKS),
        profile(True, NATIVE_STACKS, ["Error: Failed to suspend process\n"]),
    ]
    return out


def quick_noisy_run() -> dict[str, Any]:
    """``--quick --no-stock --compression none`` on a busy machine that starves the
    generator: one repetition, flags on every figure that cannot be trusted, lost
    messages and hub drops, a hub that closed idle sockets and died, a low file limit."""
    combos = ["task-json", "audio-json"]
    c = config(
        reps=1,
        fixed_seconds=1.5,
        sat_seconds=1.0,
        solo_seconds=1.0,
        warmup=0.3,
        idle=300,
        profile_seconds=2.0,
        quick=True,
        no_stock=True,
        compression="none",
        profile_native=False,
        payloads="task-json,audio-json",
        combos=combos,
        keep_logs=True,
    )
    out = header(
        command="bushub-bench --quick --no-stock --compression none --keep-logs",
        config=c,
        code="commit 896a8f0, with 2 uncommitted change(s) in services/ and libs/buswire/",
        nofile={
            "soft": 1024,
            "hard": 1024,
            "wanted": 1324,
            "note": "RLIMIT_NOFILE hard limit 1024 is below the 1324 descriptors needed",
        },
        logs="/tmp/bushub-bench-k2x9q1",
        elapsed_s=58.6,
    )
    slow_floor = dict(FLOOR)
    _, us, r_us, lg, _, _, rb, wb = FLOOR["task-json/fixed"]
    slow_floor["task-json/fixed"] = (1820.0, us, r_us, lg, (2.1, 48.0, 90.0), 35.5, rb, wb)
    hub = phases_of(HUB, combos, 0, others_cores=0.8)
    for ph in hub:
        if ph["kind"] == "saturation":
            ph.update(phase(ph["name"], HUB[ph["name"]], others_cores=0.8, loadgen_cores=0.93))
    hub[0]["counters"] = counters(hub[0]["counters"]["sent"], lost=3, late=1)
    out["runs"] = [
        relay_run("hub", 0, hub, drops={"queue_full": 12.0, "slow_consumer": 3.0}),
        relay_run("floor", 0, phases_of(slow_floor, combos, 0, others_cores=0.7)),
    ]
    out["idle"] = [
        idle_result(
            "hub",
            "hub",
            "none",
            300,
            11.8,
            still_open=291,
            errors={"TimeoutError": 2, "HTTP 503": 5},
            closed_by_server={"1013 try again later": 9},
            opened=293,
            alive_after=False,
        ),
        idle_result("floor", "floor", "none", 300, 14.2),
    ]
    out["profiles"] = [profile(False, PY_STACKS[:1] + PY_STACKS[3:4], ["py-spy exited 1"])]
    return out


def idle_only_run() -> dict[str, Any]:
    """``--idle-only --idle 10000``: no relay runs; one hub measurement fell short."""
    out = header(
        command="bushub-bench --idle-only --idle 10000",
        config=config(idle_only=True, profile_native=False),
        elapsed_s=71.0,
    )
    del out["hub_argv"]
    out["idle"] = [
        idle_result("hub", "hub", "deflate", 10000, 12.2),
        idle_result(
            "hub", "hub, no deflate", "none", 10000, 12.4, opened=9990, errors={"HTTP 503": 10}
        ),
        idle_result("floor", "floor", "deflate", 10000, 13.8, rss_before_kb=37580),
    ]
    return out


def profile_only_run() -> dict[str, Any]:
    """``--profile-only --profile-native``: only the two profiles, nothing else."""
    out = header(
        command="bushub-bench --profile-only --profile-native",
        config=config(profile_only=True),
        code="unknown (no git)",
        elapsed_s=25.0,
    )
    out["profiles"] = [profile(False, PY_STACKS), profile(True, NATIVE_STACKS)]
    return out


def missing_figures_run() -> dict[str, Any]:
    """Measurements that came back empty: no messages relayed in a window, no RTT or
    send-lag samples, no ``/proc`` I/O or machine figures, sockets that never opened,
    a floor measured only partly and no floor idle measurement at all."""
    combos = ["task-json", "audio-json", "audio-msgpack"]
    payloads = ",".join(combos)
    out = header(
        command=f"bushub-bench --reps 2 --payloads {payloads} --idle 500",
        config=config(reps=2, payloads=payloads, combos=combos, idle=500),
        code="",
        nofile={"soft": 4096, "hard": 4096, "wanted": 1524},
        elapsed_s=120.4,
    )
    del out["hub_argv"]
    for rep in range(2):
        hub = phases_of(HUB, combos, rep)
        dead = hub[0]
        dead.update(completed=0, relayed=0, rt_per_s=0.0, rtt_ms=None, send_lag_ms=None)
        dead["rtt_samples"] = 0
        # Hub nodes that were never sampled: no CPU figures for them at all.
        dead["cpu_s"] = {"redis": 0.0, "loadgen": 0.4}
        del hub[1]["cpu_sys_s"]
        del hub[1]["rtt_samples"]
        for ph in hub[2:]:
            ph.update(io_bytes={}, machine_s={}, send_lag_ms=None)
        floor = [
            ph
            for ph in phases_of(FLOOR, combos, rep)
            if not ph["name"].startswith(("audio-msgpack/", "solo/saturation"))
        ]
        for ph in floor:
            ph["cpu_s"]["redis"] = 0.0
            ph["machine_s"] = {}
        out["runs"].append(relay_run("hub", rep, hub))
        out["runs"].append(relay_run("floor", rep, floor))
        stock = phases_of(STOCK, [], rep, server_procs=("node1",))
        out["runs"].append(relay_run("stock", rep, stock, STOCK_DEFLATE))
    out["idle"] = [
        idle_result("hub", "hub", "deflate", 500, 0.0, opened=0, errors={"OSError": 500}),
    ]
    return out


def idle_scale_run() -> dict[str, Any]:
    """``--idle-only --idle 2000,18000,100000 --idle-hold 40 --idle-floor-max 10000``:
    counts side by side, the floor skipped above its cap, 100,000 past the file limit."""
    out = header(
        command="bushub-bench --idle-only --idle 2000,18000,100000 --idle-hold 40 "
        "--idle-floor-max 10000",
        config=config(idle=[2000, 18000, 100000], idle_only=True, profile_native=False),
        elapsed_s=402.0,
    )
    del out["hub_argv"]
    out["idle"] = [
        idle_result("hub", "hub", "deflate", 2000, 12.6, hold_s=40.0),
        idle_result("hub", "hub, no deflate", "none", 2000, 12.9, hold_s=40.0),
        idle_result("floor", "floor", "deflate", 2000, 13.2, rss_before_kb=37580, hold_s=40.0),
        idle_result("hub", "hub", "deflate", 18000, 12.1, hold_s=40.0, us_per_sock_s=1.4),
        idle_result(
            "hub",
            "hub, no deflate",
            "none",
            18000,
            12.3,
            hold_s=40.0,
            still_open=17990,
            closed_by_server={"1011 keepalive ping timeout": 10},
        ),
    ]
    out["idle_skipped"] = [
        {
            "server": "floor",
            "label": "floor",
            "count": 18000,
            "reason": "above --idle-floor-max 10,000",
        },
        *(
            {
                "server": kind,
                "label": label,
                "count": 100000,
                "reason": "RLIMIT_NOFILE hard limit 20000 is below the 100,256 descriptors one "
                "server process needs for these sockets",
            }
            for kind, label in (("hub", "hub"), ("hub", "hub, no deflate"), ("floor", "floor"))
        ),
    ]
    return out


def storm_result(count: int) -> dict[str, Any]:
    """A reconnect storm's result as ``cli.run`` keeps it: most clients back after the
    takeover wait, some after a 503 or a timed-out connection, one given up."""
    back = [round(2.1 + 0.8 * k / count, 4) for k in range(count)]
    back[-1] = None  # type: ignore[call-overload]
    failures = [[0.3 + 0.01 * k, k % 2, "HTTP 503"] for k in range(count // 10)]
    failures += [[10.2, 0, "ConnectTimeout"], [10.3, 1, "TimeoutError"]]
    samples = []
    for k in range(20):
        t = -0.01 if k == 0 else 0.2 * k
        busy = 0.16 * (k - 10) if k > 10 else 0.0
        samples.append(
            {
                "t": t,
                "redis_cpu_s": 3.0 + 0.02 * k + (0.03 * (k - 10) if k > 10 else 0.0),
                "redis_commands": 50_000 + 400 * k + (6_000 * (k - 10) if k > 10 else 0),
                "cpu_s": {
                    "redis": 3.0 + 0.02 * k,
                    "survivor1": 4.0 + 0.02 * k + busy,
                    "survivor2": 4.1 + 0.02 * k + 0.9 * busy,
                },
                "loadgen_cpu_s": 1.0 + 0.05 * k,
                "machine": {"user": 100.0 + 0.3 * k, "system": 20.0 + 0.05 * k, "idle": 50.0},
            }
        )
    return {
        "count": count,
        "opened": count,
        "t_kill": 12345.678,
        "restored_s": 3.2,
        "settle_s": 5.0,
        "sample_s": 0.2,
        "pick": "alternate",
        "policy": {
            "initial_delay": 0.2,
            "max_delay": 10.0,
            "multiplier": 2.0,
            "jitter": 0.5,
            "max_elapsed": 60.0,
        },
        "open_timeout": 10.0,
        "ping_interval": 20.0,
        "loadgens": 1,
        "source_addresses": ["127.0.0.1"],
        "nofile": {"soft": 20000, "hard": 20000, "wanted": count + 256},
        "connections_before": {"hub-n1": float(count), "hub-n2": 0.0, "hub-n3": 0.0},
        "connections_after": {"hub-n2": float(count // 2), "hub-n3": float(count // 2 - 1)},
        "survivors": ["hub-n2", "hub-n3"],
        "open_s": 4.2,
        "clients": {
            "opened": count,
            "registry_before": count,
            "lost": [round(0.01 + 0.1 * k / count, 4) for k in range(count)],
            "established": back,
            "survivor": [k % 2 if k < count - 1 else -1 for k in range(count)],
            "attempts": [1 + (k % 10 == 0) for k in range(count)],
            "registry_after": [t for t in back],
            "failures": failures,
            "gave_up": {"deadline; last: HTTP 503": 1},
            "unfinished": 0,
            "closed_after": {},
            "still_open": count - 1,
            "open_errors": {},
        },
        "samples": samples,
        "redis_window": {"commands": 90_000, "cpu_s": 0.6, "by_command": {"evalsha": 400}},
        "survivors_alive": [True, True],
        "hub_argv": "/work/main/.venv/bin/python -m bushub serve --port 40001 --node-id n2",
        "redis_alive": True,
    }


def storm_only_run() -> dict[str, Any]:
    """``--storm-only --storm 200``: the reconnect storm alone; one client gave up."""
    out = header(
        command="bushub-bench --storm-only --storm 200",
        config=config(idle_only=False, profile_native=False, storm=200, storm_only=True),
        elapsed_s=48.0,
    )
    del out["hub_argv"]
    out["storm"] = [storm_result(200)]
    return out


# Resume variants against sessions off: (CPU, p99, Redis) multipliers per variant.
RESUME_COST = {
    "off": (1.0, 1.0, 1.0),
    "on-plain": (1.05, 1.1, 1.3),
    "on-session": (1.4, 1.6, 3.0),
    "off-busy": (0.97, 1.3, 0.95),
}


def resume_runs(reps: int = 3) -> list[dict[str, Any]]:
    """Workload R's JSON task and audio phases in the three resume variants, and the
    control's fixed-rate phases."""
    runs = []
    for rep in range(reps):
        for variant, (cpu, p99, redis) in RESUME_COST.items():
            phases = []
            for name in ("task-json/fixed", "task-json/saturation", "audio-json/fixed"):
                if variant == "off-busy" and name.endswith("/saturation"):
                    continue
                rt, us, redis_us, lg, (p50, p99_ms, p999), lag, size, writes = HUB[name]
                figs = (rt, us * cpu, redis_us * redis, lg, (p50, p99_ms * p99, p999), lag)
                extra = 9 if variant == "on-session" else 0
                phases.append(phase(name, (*figs, size + extra, writes), spread=REP_SPREAD[rep]))
            run = {"phases": phases, "server": variant, "rep": rep, "drops": {}}
            if variant == "on-session":
                run["session"] = {
                    "sockets": 100,
                    "resume": {"new": 100},
                    "acks_sent": 500,
                    "acks_received": 900,
                    "unnumbered": 0,
                    "duplicates": 0,
                    "malformed": 0,
                    "sent": 32000,
                    "taken": 32000,
                }
                if rep == 2:
                    run["drops"] = {"closing": 3.0}
            runs.append(run)
    return runs


def memory_variant(kind: str, combo: str, size: int, kept_per_msg: int) -> dict[str, Any]:
    """One ``busbench.sessionmem`` variant: 1,000 agents, 10 messages each."""
    base = 2_000_000
    opened = base + 1000 * (1200 if kind == "session" else 1000)
    kept = opened + 1000 * 10 * kept_per_msg
    away = base + (1000 * (300 + 10 * kept_per_msg) if kind == "session" else 2000)
    return {
        "kind": kind,
        "combo": combo,
        "sessions": 1000,
        "messages": 10,
        "message_bytes": size,
        "open_s": 1.5,
        "announced": True,
        "arrived": True,
        "received": 10000 if kind == "plain" else 9990,
        "other_frames": 0,
        "used_memory": {"before": base, "open": opened, "kept": kept, "away": away},
        "keys": {"before": "", "open": "keys=4000", "kept": "keys=5000", "away": "keys=2000"},
        "send_s": 0.8,
        "redis_cpu_s": 0.1 if kind == "plain" else 0.25,
        "hub_cpu_s": 0.6,
    }


def resume_only_run() -> dict[str, Any]:
    """``--resume-only``: the three variants and the memory per session; one session
    variant lost ten messages (the report flags it)."""
    out = header(
        command="bushub-bench --resume-only --reps 3",
        config=config(
            idle_only=False,
            profile_native=False,
            resume=True,
            resume_only=True,
            resume_combos=["task-json", "audio-json"],
        ),
        elapsed_s=190.0,
    )
    del out["hub_argv"]
    out["resume"] = {
        "runs": resume_runs(),
        "hub_argv": {
            "off": "python -m bushub serve --node-id off1 --resume-window 0",
            "on": "python -m bushub serve --node-id on1",
        },
        "memory": {
            "sessions": 1000,
            "messages": 10,
            "hub_argv": "python -m bushub serve --node-id mem --accept-rate 0",
            "variants": [
                memory_variant("plain", "task-json", 269, 0),
                memory_variant("session", "task-json", 269, 400),
                memory_variant("plain", "audio-json", 1400, 0),
                memory_variant("session", "audio-json", 1400, 1600),
            ],
        },
    }
    return out


SCENARIOS = {
    "resume_only": resume_only_run,
    "storm_only": storm_only_run,
    "full": full_run,
    "quick_noisy": quick_noisy_run,
    "idle_only": idle_only_run,
    "profile_only": profile_only_run,
    "missing_figures": missing_figures_run,
    "idle_scale": idle_scale_run,
}
