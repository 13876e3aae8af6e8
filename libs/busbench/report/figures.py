"""Figures from the raw phase results: per repetition, and their medians per phase."""

import statistics
from typing import Any

from busbench.report.stormfigures import storm_figures

SERVER_PROCS = ("node1", "node2")
ERROR_KEYS = ("lost", "duplicate", "corrupt", "late", "unexpected", "bad_request", "closed")


def _machine_figures(mach: dict[str, float], ours: float, wall: float) -> dict[str, Any]:
    """Cores the whole machine spent, from ``/proc/stat``; None where it was not read."""
    if not mach:
        return {
            "machine_busy": None,
            "others_cores": None,
            "softirq_cores": None,
            "steal_cores": None,
        }
    return {
        "machine_busy": (
            sum(mach.get(k, 0.0) for k in ("user", "nice", "system", "irq", "softirq")) / wall
        ),
        "others_cores": (
            max(0.0, sum(mach.get(k, 0.0) for k in ("user", "nice", "system")) - ours) / wall
        ),
        "softirq_cores": mach.get("softirq", 0.0) / wall,
        "steal_cores": mach.get("steal", 0.0) / wall,
    }


def phase_figures(phase: dict[str, Any]) -> dict[str, Any]:
    relayed = phase["relayed"]
    cpu = phase["cpu_s"]
    wall = phase["window_s"] or 1e-9
    server_cpu = sum(cpu.get(k, 0.0) for k in SERVER_PROCS)
    server_sys = sum((phase.get("cpu_sys_s") or {}).get(k, 0.0) for k in SERVER_PROCS)
    rtt = phase.get("rtt_ms") or {}
    lag = phase.get("send_lag_ms") or {}

    def per_msg(seconds: float) -> float | None:
        return seconds * 1e6 / relayed if relayed else None

    counters = phase["counters"]
    io = phase.get("io_bytes") or {}
    server_written = sum(io.get(k, [0, 0])[1] for k in SERVER_PROCS)
    server_read = sum(io.get(k, [0, 0])[0] for k in SERVER_PROCS)
    return {
        **_machine_figures(phase.get("machine_s") or {}, sum(cpu.values()), wall),
        "rt_per_s": phase["rt_per_s"],
        "server_us": per_msg(server_cpu),
        "redis_us": per_msg(cpu.get("redis", 0.0)),
        "loadgen_us": per_msg(cpu.get("loadgen", 0.0)),
        "server_cores": server_cpu / wall,
        "server_wbytes": server_written / relayed if relayed and io else None,
        "server_rbytes": server_read / relayed if relayed and io else None,
        "server_sys_share": server_sys / server_cpu if server_cpu else None,
        "redis_cores": cpu.get("redis", 0.0) / wall,
        "loadgen_util": cpu.get("loadgen", 0.0) / wall,
        "p50": rtt.get("p50"),
        "p99": rtt.get("p99"),
        "p999": rtt.get("p999"),
        "rtt_samples": phase.get("rtt_samples", 0),
        "lag_p99": lag.get("p99"),
        "request_bytes": phase["request_bytes"],
        "errors": {k: counters.get(k, 0) for k in ERROR_KEYS},
        "sent": counters.get("sent", 0),
        "ok": counters.get("ok", 0),
    }


def _median(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _figures_per_rep(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Server -> phase name -> the phase's figures, one entry per repetition."""
    per: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        for phase in run["phases"]:
            per.setdefault(run["server"], {}).setdefault(phase["name"], []).append(
                phase_figures(phase)
            )
    return per


def _phase_medians(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase over its repetitions: medians, but sums of counts and the worst load."""
    keys = [k for k in reps[0] if k != "errors"]
    med = {k: _median([r[k] for r in reps]) for k in keys}
    med["errors"] = {k: sum(r["errors"][k] for r in reps) for k in ERROR_KEYS}
    med["sent"] = sum(r["sent"] for r in reps)
    med["ok"] = sum(r["ok"] for r in reps)
    med["reps"] = len(reps)
    med["loadgen_util_max"] = max(r["loadgen_util"] for r in reps)
    return med


def _drops(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Hub drop counters per server, summed over its runs."""
    drops: dict[str, dict[str, float]] = {}
    for run in runs:
        for reason, value in (run.get("drops") or {}).items():
            d = drops.setdefault(run["server"], {})
            d[reason] = d.get(reason, 0.0) + value
    return drops


def _idle_figures(res: dict[str, Any]) -> dict[str, Any]:
    opened = res["opened"]
    grow = res["rss_after_kb"]["server"] - res["rss_before_kb"]["server"]
    grow_redis = res["rss_after_kb"]["redis"] - res["rss_before_kb"]["redis"]
    return {
        "server": res["server"],
        "label": res.get("label", res["server"]),
        "compression": res.get("compression"),
        "count": res["count"],
        "opened": opened,
        "still_open": res["still_open"],
        "closed_by_server": res.get("closed_by_server") or {},
        "errors": res["errors"],
        "open_s": res["open_s"],
        "rss_before_mb": res["rss_before_kb"]["server"] / 1024,
        "rss_after_mb": res["rss_after_kb"]["server"] / 1024,
        "kb_per_conn": grow / opened if opened else None,
        "redis_kb_per_conn": grow_redis / opened if opened else None,
        "alive_after": res.get("alive_after", True),
        "nofile": res["nofile"],
        **_idle_window_figures(res),
    }


def _idle_window_figures(res: dict[str, Any]) -> dict[str, Any]:
    """The quiet window: CPU and Redis commands per idle socket per second."""
    win = res.get("window")
    opened = res["opened"]
    out: dict[str, Any] = {
        "ping_interval": res.get("ping_interval"),
        "hold_s": res.get("hold_s"),
        "loadgens": res.get("loadgens"),
        "source_addresses": len(res.get("source_addresses") or []) or None,
        "window_s": None,
        "server_us_per_sock_s": None,
        "loadgen_us_per_sock_s": None,
        "redis_cmds_per_sock_s": None,
        "redis_cmds_per_s": None,
        "redis_cpu_share": None,
        "redis_by_command": {},
        "others_cores": None,
    }
    if not win or not win.get("wall_s"):
        return out
    wall = win["wall_s"]
    redis = win["redis"]
    socket_s = opened * wall
    ours = win["server_cpu_s"] + win["redis_proc_cpu_s"] + win["loadgen_cpu_s"]
    out.update(
        window_s=wall,
        server_us_per_sock_s=win["server_cpu_s"] * 1e6 / socket_s if opened else None,
        loadgen_us_per_sock_s=win["loadgen_cpu_s"] * 1e6 / socket_s if opened else None,
        redis_cmds_per_sock_s=redis["commands"] / socket_s if opened else None,
        redis_cmds_per_s=redis["commands"] / wall,
        redis_cpu_share=redis["cpu_s"] / wall,
        redis_by_command=dict(sorted(redis["by_command"].items(), key=lambda kv: -kv[1])),
        others_cores=_machine_figures(win.get("machine_s") or {}, ours, wall)["others_cores"],
    )
    return out


def _idle_key(res: dict[str, Any]) -> str:
    return f"{res.get('label', res['server'])}, {res['count']:,}"


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Per server and phase: per-repetition figures, medians, summed error counts."""
    per = _figures_per_rep(out["runs"])
    storm: dict[str, Any] = {}
    if out.get("storm"):
        storm["storm"] = [storm_figures(res) for res in out["storm"]]
    if out.get("storm_skipped"):
        storm["storm_skipped"] = out["storm_skipped"]
    if out.get("resume"):
        from busbench.report.resume import resume_summary  # it imports this module

        storm["resume"] = resume_summary(out["resume"])
    return {
        "per_rep": per,
        "medians": {
            server: {name: _phase_medians(reps) for name, reps in phases.items()}
            for server, phases in per.items()
        },
        "drops": _drops(out["runs"]),
        "idle": {_idle_key(res): _idle_figures(res) for res in out.get("idle", [])},
        "idle_skipped": out.get("idle_skipped") or [],
        "ext": {run["server"]: run.get("extensions") for run in out["runs"]},
        **storm,
    }
