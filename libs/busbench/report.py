"""Figures from the raw phase results, and the Markdown report."""

import re
import statistics
from collections import Counter
from typing import Any

SERVER_PROCS = ("node1", "node2")
ERROR_KEYS = ("lost", "duplicate", "corrupt", "late", "unexpected", "bad_request", "closed")
LOADGEN_SATURATED = 0.85
SERVER_LABEL = {
    "hub": "bushub (2 nodes)",
    "floor": "floor (2 procs)",
    "stock": "stock proxy (1 proc)",
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
    mach = phase.get("machine_s") or {}
    ours = sum(cpu.values())
    return {
        "machine_busy": (
            sum(mach.get(k, 0.0) for k in ("user", "nice", "system", "irq", "softirq")) / wall
            if mach
            else None
        ),
        "others_cores": (
            max(0.0, sum(mach.get(k, 0.0) for k in ("user", "nice", "system")) - ours) / wall
            if mach
            else None
        ),
        "softirq_cores": mach.get("softirq", 0.0) / wall if mach else None,
        "steal_cores": mach.get("steal", 0.0) / wall if mach else None,
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


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Per server and phase: per-repetition figures, medians, summed error counts."""
    per: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in out["runs"]:
        for phase in run["phases"]:
            per.setdefault(run["server"], {}).setdefault(phase["name"], []).append(
                phase_figures(phase)
            )
    medians: dict[str, dict[str, dict[str, Any]]] = {}
    for server, phases in per.items():
        for name, reps in phases.items():
            keys = [k for k in reps[0] if k != "errors"]
            med = {k: _median([r[k] for r in reps]) for k in keys}
            med["errors"] = {k: sum(r["errors"][k] for r in reps) for k in ERROR_KEYS}
            med["sent"] = sum(r["sent"] for r in reps)
            med["ok"] = sum(r["ok"] for r in reps)
            med["reps"] = len(reps)
            med["loadgen_util_max"] = max(r["loadgen_util"] for r in reps)
            medians.setdefault(server, {})[name] = med
    drops: dict[str, dict[str, float]] = {}
    for run in out["runs"]:
        for reason, value in (run.get("drops") or {}).items():
            d = drops.setdefault(run["server"], {})
            d[reason] = d.get(reason, 0.0) + value
    extensions = {run["server"]: run.get("extensions") for run in out["runs"]}
    idle = {}
    for res in out.get("idle", []):
        opened = res["opened"]
        grow = res["rss_after_kb"]["server"] - res["rss_before_kb"]["server"]
        grow_redis = res["rss_after_kb"]["redis"] - res["rss_before_kb"]["redis"]
        idle[res.get("label", res["server"])] = {
            "server": res["server"],
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
        }
    return {"per_rep": per, "medians": medians, "drops": drops, "idle": idle, "ext": extensions}


# ---- formatting ------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


RATE_HELD = 0.97  # achieved / asked rate below this: the fixed rate was not held
LAG_LIMIT_MS = 20.0  # send lag p99 above this: the generator was starved of CPU


def _rate_note(m: dict[str, Any], rate: float) -> str:
    notes = []
    if m.get("rt_per_s") is not None and m["rt_per_s"] < RATE_HELD * rate:
        notes.append("rate not held")
    if m.get("lag_p99") is not None and m["lag_p99"] > LAG_LIMIT_MS:
        notes.append("sends late")
    return "**" + ", ".join(notes) + "**" if notes else ""


def _noise(summary: dict[str, Any]) -> float | None:
    """Median cores taken by other processes during the measured windows."""
    others = [
        r["others_cores"]
        for phases in summary["per_rep"].values()
        for reps in phases.values()
        for r in reps
        if r.get("others_cores") is not None
    ]
    return statistics.median(others) if others else None


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "0"


def _offer(idle: dict[str, Any]) -> str:
    offer = idle["compression"] or "-"
    if idle["server"] == "floor" and offer == "deflate":
        offer += " (declined)"
    return str(offer)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _ratio(a: Any, b: Any) -> str:
    if a is None or b in (None, 0):
        return "-"
    return f"{a / b:.2f}x"


def _ratio_val(a: Any, b: Any) -> float | None:
    if a is None or b in (None, 0):
        return None
    return float(a / b)


def _table(header: list[str], rows: list[list[str]], align_first: int = 1) -> str:
    align = ["---"] * align_first + ["---:"] * (len(header) - align_first)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**not met**")


def targets(summary: dict[str, Any], config: dict[str, Any]) -> list[list[str]]:
    med = summary["medians"]
    hub, floor = med.get("hub", {}), med.get("floor", {})
    rows = []

    def get(side: dict[str, Any], phase: str, key: str) -> Any:
        return side.get(phase, {}).get(key)

    fx, sat = "task-json/fixed", "task-json/saturation"
    for label, phase, key, limit, lower_is_better in (
        ("hub CPU µs/msg, fixed rate (JSON task)", fx, "server_us", 0.8, True),
        ("hub CPU µs/msg, saturation (JSON task)", sat, "server_us", 0.8, True),
        ("p99 RTT at the fixed rate (JSON task)", fx, "p99", 1.2, True),
        ("saturation round trips/s (JSON task)", sat, "rt_per_s", 1.2, False),
    ):
        h, f = get(hub, phase, key), get(floor, phase, key)
        r = _ratio_val(h, f)
        ok = None if r is None else (r <= limit if lower_is_better else r >= limit)
        sign = "<=" if lower_is_better else ">="
        flag = ""
        if key == "rt_per_s" and (
            (get(hub, phase, "loadgen_util_max") or 0) > LOADGEN_SATURATED
            or (get(floor, phase, "loadgen_util_max") or 0) > LOADGEN_SATURATED
        ):
            flag = " (load generator saturated: lower bound)"
        if key == "p99":
            flagged = [
                name
                for name, side in (("hub", hub), ("floor", floor))
                if _rate_note(side.get(phase, {}), config["rate"])
            ]
            if flagged:
                flag = f" ({' and '.join(flagged)}: rate not held or sends late)"
        digits = 2 if key == "p99" else 1
        rows.append(
            [
                label,
                _f(h, digits),
                _f(f, digits),
                _ratio(h, f) + flag,
                f"{sign} {limit}x floor",
                _verdict(ok),
            ]
        )
    idle_floor = summary["idle"].get("floor")
    floor_kb = idle_floor["kb_per_conn"] if idle_floor else None
    for idle in summary["idle"].values():
        if idle["server"] != "hub":
            continue
        kb = idle["kb_per_conn"]
        rows.append(
            [
                f"RSS per idle connection ({idle['opened']:,} sockets, "
                f"client offers {idle['compression']})",
                _f(kb),
                _f(floor_kb),
                _ratio(kb, floor_kb),
                "<= 16 KB",
                _verdict(kb is not None and kb <= 16),
            ]
        )
    for label, idle in summary["idle"].items():
        if idle["server"] != "hub":
            continue
        ok10k = None
        if idle["count"] >= 10000:
            ok10k = (
                idle["opened"] == idle["count"]
                and idle["still_open"] == idle["count"]
                and not idle["errors"]
                and not idle["closed_by_server"]
                and idle["alive_after"]
            )
        rows.append(
            [
                f"10,000 concurrent idle connections on one node ({label})",
                f"{idle['still_open']:,}/{idle['count']:,} open; refused: "
                f"{_counts(idle['errors'])}; closed: {_counts(idle['closed_by_server'])}",
                (
                    f"{idle_floor['still_open']:,}/{idle_floor['count']:,} open"
                    if idle_floor
                    else "-"
                ),
                "",
                "10,000, no errors",
                _verdict(ok10k) if ok10k is not None else f"not tried (ran {idle['count']:,})",
            ]
        )
    aj, am = hub.get("audio-json/fixed"), hub.get("audio-msgpack/fixed")
    if aj and am:
        rows.append(
            [
                "MsgPack audio vs JSON audio: bytes per message",
                f"{am['request_bytes']:,} B",
                f"{aj['request_bytes']:,} B",
                _ratio(am["request_bytes"], aj["request_bytes"]),
                "< 1 (MsgPack / JSON)",
                _verdict(am["request_bytes"] < aj["request_bytes"]),
            ]
        )
        wm, wj = am.get("server_wbytes"), aj.get("server_wbytes")
        r = _ratio_val(wm, wj)
        rows.append(
            [
                "MsgPack audio vs JSON audio: bytes the hubs write per relayed message "
                "(sockets and Redis, after deflate)",
                _f(wm, 0),
                _f(wj, 0),
                _ratio(wm, wj),
                "< 1 (MsgPack / JSON)",
                _verdict(None if r is None else r < 1),
            ]
        )
        for kind in ("fixed", "saturation"):
            mj = hub.get(f"audio-json/{kind}", {}).get("server_us")
            mm = hub.get(f"audio-msgpack/{kind}", {}).get("server_us")
            r = _ratio_val(mm, mj)
            rows.append(
                [
                    f"MsgPack audio vs JSON audio: hub CPU µs/msg, {kind}",
                    _f(mm),
                    _f(mj),
                    _ratio(mm, mj),
                    "< 1 (MsgPack / JSON)",
                    _verdict(None if r is None else r < 1),
                ]
            )
    return rows


def markdown(out: dict[str, Any]) -> str:
    s = out["summary"]
    c = out["config"]
    med = s["medians"]
    lines: list[str] = []
    add = lines.append
    add("# bushub-bench: workload R")
    add("")
    add(f"- Command: `{out['command']}`")
    add(f"- Machine: {out['machine']}")
    add(f"- Host: {out['host']}; {out['versions']}")
    add(
        f"- Workload: K = {c['pairs']} pairs, `a_i` on hub node 1, `b_i` on node 2, `b_i` "
        "echoes every message to `a_i`; the same clients and payloads for every server."
    )
    add(
        f"- Fixed rate: {c['rate']:,.0f} round trips/s overall (open loop, sends on a clock, "
        f"{c['rate'] / c['pairs']:,.1f}/s per pair), {c['fixed_seconds']:g} s measured after "
        f"{c['warmup']:g} s warm-up. Saturation: {c['inflight']} messages in flight per pair "
        f"(closed loop), {c['sat_seconds']:g} s measured. One pair: {c['solo_rate']:g} rt/s "
        f"fixed and {c['inflight']} in flight, {c['solo_seconds']:g} s each, JSON task."
    )
    add(
        f"- Repetitions: {c['reps']}, alternating hub, floor, stock; every figure is the "
        "median over repetitions, error counts are sums."
        + (" **Fewer than 3: not a median.**" if c["reps"] < 3 else "")
    )
    add(
        f"- Clients offer permessage-deflate: {c['compression']} (the stock proxy client's "
        f"`websockets.connect()` offers deflate). Negotiated: "
        + ", ".join(f"{k}: `{v or 'none'}`" for k, v in s["ext"].items())
    )
    if out.get("code"):
        add(f"- Code: {out['code']}")
    if out.get("hub_argv"):
        add(f"- Hub node: `{out['hub_argv']}`")
    nof = out["nofile"]
    add(
        f"- RLIMIT_NOFILE: soft {nof['soft']}, hard {nof['hard']} (needed {nof['wanted']})"
        + (f" — **{nof['note']}**" if nof.get("note") else "")
    )
    add(f"- Elapsed: {out['elapsed_s']:.0f} s")
    noise = _noise(s)
    if noise is not None and noise > 0.5:
        add(
            f"- **Noisy run: other processes took a median of {noise:.2f} of the 2 cores "
            "during the measured windows. Latency and saturation throughput suffer first; "
            "CPU per message, which each process accounts for itself, is the robust figure.**"
        )
    add("")
    add(
        "CPU µs/msg: utime+stime from `/proc/<pid>/stat` over the measured window, summed "
        "over the server's processes (two hub nodes, two floor processes, the one stock "
        "process), divided by messages relayed (a round trip is two relayed messages). "
        "Redis and the load generator are reported apart, per relayed message too."
    )
    add("")
    add("## Targets (JSON task payload unless said)")
    add("")
    add(
        _table(
            ["figure", "hub", "floor / other", "ratio", "target", "verdict"],
            targets(s, c),
        )
    )
    add("")

    combos = c["combos"]
    add(f"## Fixed rate: {c['rate']:,.0f} round trips/s over {c['pairs']} pairs")
    add("")
    rows = []
    for combo in combos:
        name = f"{combo}/fixed"
        h, f = med.get("hub", {}).get(name), med.get("floor", {}).get(name)
        for label, m in (("hub", h), ("floor", f)):
            if not m:
                continue
            rows.append(
                [
                    combo,
                    label,
                    _f(m["request_bytes"]),
                    _f(m["server_wbytes"], 0),
                    _f(m["rt_per_s"], 0),
                    _f(m["p50"], 2),
                    _f(m["p99"], 2),
                    _f(m["p999"], 2),
                    _f(m["server_us"]),
                    _f(m["server_cores"], 2),
                    _pct(m["server_sys_share"]),
                    _f(m["redis_us"]),
                    _f(m["loadgen_us"]),
                    _f(m["loadgen_util"], 2),
                    _f(m["lag_p99"], 2),
                    _rate_note(m, c["rate"]),
                ]
            )
        if h and f:
            rows.append(
                [
                    combo,
                    "*hub/floor*",
                    "",
                    _ratio(h["server_wbytes"], f["server_wbytes"]),
                    "",
                    _ratio(h["p50"], f["p50"]),
                    _ratio(h["p99"], f["p99"]),
                    _ratio(h["p999"], f["p999"]),
                    _ratio(h["server_us"], f["server_us"]),
                    _ratio(h["server_cores"], f["server_cores"]),
                    "",
                    _ratio(h["redis_us"], f["redis_us"]),
                    "",
                    "",
                    "",
                    "",
                ]
            )
    add(
        _table(
            [
                "payload",
                "server",
                "frame B",
                "server writes B/msg",
                "rt/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "server CPU µs/msg",
                "server cores",
                "of it kernel",
                "Redis µs/msg",
                "loadgen µs/msg",
                "loadgen util",
                "send lag p99 ms",
                "note",
            ],
            rows,
            2,
        )
    )
    add("")
    add(
        "*frame B*: the request as the client sends it. *server writes B/msg*: bytes the "
        "server processes passed to write syscalls (`wchar` of `/proc/<pid>/io`: client "
        "sockets after permessage-deflate, plus Redis traffic) per relayed message. "
        "RTT is measured from the moment the load generator hands the request to its "
        "socket to the moment the reply is read; *send lag* is how late sends left "
        "against their clock (a large lag means the generator could not keep the rate)."
    )
    add("")

    add(f"## Saturation: {c['inflight']} in flight per pair, {c['pairs']} pairs")
    add("")
    rows = []
    for combo in combos:
        name = f"{combo}/saturation"
        h, f = med.get("hub", {}).get(name), med.get("floor", {}).get(name)
        for label, m in (("hub", h), ("floor", f)):
            if not m:
                continue
            flag = "**saturated: lower bound**" if m["loadgen_util_max"] > LOADGEN_SATURATED else ""
            rows.append(
                [
                    combo,
                    label,
                    _f(m["rt_per_s"], 0),
                    _f(m["server_us"]),
                    _f(m["server_cores"], 2),
                    _pct(m["server_sys_share"]),
                    _f(m["redis_us"]),
                    _f(m["redis_cores"], 2),
                    _f(m["loadgen_us"]),
                    _f(m["loadgen_util"], 2),
                    _f(m["p50"], 2),
                    _f(m["p99"], 2),
                    flag,
                ]
            )
        if h and f:
            rows.append(
                [
                    combo,
                    "*hub/floor*",
                    _ratio(h["rt_per_s"], f["rt_per_s"]),
                    _ratio(h["server_us"], f["server_us"]),
                    "",
                    "",
                    _ratio(h["redis_us"], f["redis_us"]),
                    "",
                    "",
                    "",
                    _ratio(h["p50"], f["p50"]),
                    _ratio(h["p99"], f["p99"]),
                    "",
                ]
            )
    add(
        _table(
            [
                "payload",
                "server",
                "rt/s",
                "server CPU µs/msg",
                "server cores",
                "of it kernel",
                "Redis µs/msg",
                "Redis cores",
                "loadgen µs/msg",
                "loadgen util",
                "p50 ms",
                "p99 ms",
                "load generator",
            ],
            rows,
            2,
        )
    )
    add("")

    add("## One pair: hub vs floor vs today's stock proxy (JSON task)")
    add("")
    rows = []
    solo = {
        srv: (med.get(srv, {}).get("solo/fixed"), med.get(srv, {}).get("solo/saturation"))
        for srv in ("hub", "floor", "stock")
    }
    for srv, (fx, sat) in solo.items():
        if not fx or not sat:
            continue
        rows.append(
            [
                SERVER_LABEL[srv],
                _f(fx["p50"], 2),
                _f(fx["p99"], 2),
                _f(fx["p999"], 2),
                _f(fx["server_us"]),
                _f(sat["rt_per_s"], 0),
                _f(sat["server_us"]),
                _f(sat["loadgen_util"], 2),
            ]
        )
    hub_fx, hub_sat = solo["hub"]
    for other in ("floor", "stock"):
        ofx, osat = solo[other]
        if hub_fx and ofx and hub_sat and osat:
            rows.append(
                [
                    f"*hub / {other}*",
                    _ratio(hub_fx["p50"], ofx["p50"]),
                    _ratio(hub_fx["p99"], ofx["p99"]),
                    _ratio(hub_fx["p999"], ofx["p999"]),
                    _ratio(hub_fx["server_us"], ofx["server_us"]),
                    _ratio(hub_sat["rt_per_s"], osat["rt_per_s"]),
                    _ratio(hub_sat["server_us"], osat["server_us"]),
                    "",
                ]
            )
    add(
        _table(
            [
                "server",
                f"p50 ms @{c['solo_rate']:g}/s",
                "p99 ms",
                "p99.9 ms",
                "CPU µs/msg @fixed",
                f"rt/s, {c['inflight']} in flight",
                "CPU µs/msg @saturation",
                "loadgen util",
            ],
            rows,
        )
    )
    add("")
    add(
        "The hub relays through two processes and Redis; the stock proxy is one process "
        "with the echo agent inside it (its CPU includes the agent's bus and the "
        "serializer's decode and encode of every message)."
    )
    add("")

    if s["idle"]:
        add("## Idle connections (node 1 only)")
        add("")
        rows = []
        for srv, m in s["idle"].items():
            rows.append(
                [
                    srv,
                    _offer(m),
                    f"{m['opened']:,}/{m['count']:,}",
                    f"{m['still_open']:,}",
                    _counts(m["errors"]),
                    _counts(m["closed_by_server"]),
                    _f(m["open_s"]),
                    _f(m["rss_before_mb"]),
                    _f(m["rss_after_mb"]),
                    _f(m["kb_per_conn"]),
                    _f(m["redis_kb_per_conn"]),
                ]
            )
        add(
            _table(
                [
                    "server",
                    "client offers",
                    "opened",
                    "open after hold",
                    "refused",
                    "closed by server (code reason)",
                    "open s",
                    "RSS before MB",
                    "RSS after MB",
                    "KB/conn",
                    "Redis KB/conn",
                ],
                rows,
            )
        )
        add("")
        add(
            "Each measurement uses a freshly started server process (node 1 of its kind, on "
            "the same Redis), warmed with 100 sockets opened and closed. Each idle socket is "
            "`/ws/idleN?peer=absentN` (a peer that never connects), opened 64 at a time; "
            "RSS (`VmRSS`) is read before and 2-3 s after the last one opened. The floor "
            "never negotiates permessage-deflate, whatever the client offers."
        )
        add("")

    add("## Loss and duplication (sums over repetitions; must all be 0)")
    add("")
    rows = []
    for srv, phases in med.items():
        tot = {k: 0 for k in ERROR_KEYS}
        sent = ok = 0
        for m in phases.values():
            sent += m["sent"]
            ok += m["ok"]
            for k in ERROR_KEYS:
                tot[k] += m["errors"][k]
        drops = s["drops"].get(srv)
        rows.append(
            [srv, _f(sent), _f(ok)]
            + [_f(tot[k]) for k in ERROR_KEYS]
            + [", ".join(f"{k} {v:.0f}" for k, v in (drops or {}).items()) or "-"]
        )
    add(_table(["server", "sent", "ok", *ERROR_KEYS, "hub dropped counters"], rows))
    add("")

    add("## Load generator")
    add("")
    worst = []
    for srv, phases in med.items():
        for name, m in phases.items():
            worst.append((m["loadgen_util_max"], srv, name))
    worst.sort(reverse=True)
    busy = [w for w in worst if w[0] > LOADGEN_SATURATED]
    top = ", ".join(f"{srv} {name} {u:.2f}" for u, srv, name in worst[:5])
    add(f"Highest load-generator utilisation (one core = 1.00): {top}.")
    if busy:
        add(
            f"**{len(busy)} phase(s) above {LOADGEN_SATURATED:.2f} of a core: their saturation "
            "figures are lower bounds for the server.**"
        )
    else:
        add(f"No phase above {LOADGEN_SATURATED:.2f}: the generator was not the bottleneck.")
    add("")

    add("## The machine during the measured windows")
    add("")
    rows = []
    for srv, phases in s["per_rep"].items():
        figs = [r for reps in phases.values() for r in reps]
        others = [r["others_cores"] for r in figs if r["others_cores"] is not None]
        if not others:
            continue
        busy = [r["machine_busy"] for r in figs if r["machine_busy"] is not None]
        soft = [r["softirq_cores"] for r in figs if r["softirq_cores"] is not None]
        steal = [r["steal_cores"] for r in figs if r["steal_cores"] is not None]
        rows.append(
            [
                srv,
                str(len(figs)),
                _f(statistics.median(busy), 2),
                _f(statistics.median(others), 2),
                _f(max(others), 2),
                _f(statistics.median(soft), 2),
                _f(max(steal), 2),
            ]
        )
    add(
        _table(
            [
                "server",
                "windows",
                "machine busy, cores (median)",
                "other processes, cores (median)",
                "(max)",
                "softirq cores (median)",
                "steal (max)",
            ],
            rows,
        )
    )
    add("")
    add(
        "From `/proc/stat` over the same windows. *Other processes* is user+system time "
        "not spent by the measured processes (server, Redis, load generator): other "
        "people's work on the shared cores. Softirq time (loopback TCP delivery, partly) "
        "is charged to no process, so it is in none of the per-process figures."
    )
    add("")

    add("## Repetitions (JSON task payload)")
    add("")
    rows = []
    for srv in ("hub", "floor", "stock"):
        reps = s["per_rep"].get(srv, {})
        for name, key, digits in (
            ("task-json/fixed", "server_us", 1),
            ("task-json/fixed", "p99", 2),
            ("task-json/saturation", "rt_per_s", 0),
            ("task-json/saturation", "server_us", 1),
            ("solo/fixed", "server_us", 1),
            ("solo/saturation", "rt_per_s", 0),
        ):
            if name in reps:
                rows.append(
                    [srv, f"{name} {key}", " / ".join(_f(r[key], digits) for r in reps[name])]
                )
    add(_table(["server", "figure", "per repetition"], rows, 2))
    add("")

    for prof in out.get("profiles") or []:
        native = prof["mode"] == "native"
        add(
            "## Profile: both hub nodes under the fixed-rate JSON task load"
            + (" (native frames)" if native else "")
        )
        add("")
        ph = phase_figures(prof["phase"])
        add(
            f"{prof['tool']}; {prof['samples']:,} busy samples over "
            f"{prof['phase']['window_s']:.1f} s at {ph['rt_per_s']:,.0f} rt/s "
            f"(hub {_f(ph['server_us'])} µs/msg while profiled)"
            + (f", {prof['idle_samples']:,} idle samples (epoll) left out" if native else "")
            + ". Own = samples where the function is the innermost frame; total = samples "
            "where it is anywhere on the stack."
            + (
                ""
                if native
                else " Time in C code (uvloop's loop, socket syscalls, orjson) is charged to "
                "the innermost Python frame: `Runner.run` is uvloop itself."
            )
        )
        if prof.get("errors"):
            add(f"py-spy errors: {prof['errors']}")
        add("")
        add(
            _table(
                ["#", "function", "where", "own %", "total %"],
                [[str(i + 1), *row] for i, row in enumerate(prof["table"])],
                3,
            )
        )
        add("")
        if prof.get("project") and not native:
            add("The project's own functions by total (the function and all it calls):")
            add("")
            add(
                _table(
                    ["function", "where", "total %", "own %"],
                    prof["project"],
                    2,
                )
            )
            add("")
    if out.get("logs"):
        add(f"Child logs kept in `{out['logs']}`.")
    return "\n".join(lines)


# ---- py-spy ----------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/services/", "/libs/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path


def _parse(stacks: list[str]) -> list[tuple[list[str], int]]:
    out = []
    for line in stacks:
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            if m:
                frames.append(f"{m['func']}|{_short(m['file'])}:{m['line'] or '?'}")
            else:
                frames.append(f"{frame}|")
        out.append((frames, n))
    return out


# Leaf frames of a thread waiting for work (seen with --native, which samples idle too).
IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "select", "poll", "ppoll")


def profile_table(stacks: list[str], top: int) -> tuple[list[list[str]], int, int]:
    """Top functions by own samples, leaving out idle waits.

    Returns:
        (rows, busy samples, idle samples left out)
    """
    parsed = _parse(stacks)
    idle = sum(n for frames, n in parsed if frames and frames[-1].split("|")[0] in IDLE_LEAVES)
    parsed = [(f, n) for f, n in parsed if f and f[-1].split("|")[0] not in IDLE_LEAVES]
    total = sum(n for _, n in parsed) or 1
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in parsed:
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    rows = []
    for key, n in own.most_common(top):
        func, _, where = key.partition("|")
        rows.append(
            [f"`{func}`", f"`{where}`", f"{100 * n / total:.1f}", f"{100 * incl[key] / total:.1f}"]
        )
    return rows, sum(n for _, n in parsed), idle


_ENTRY_POINTS = ("bushub/__main__.py", "bushub/cli.py")


def project_table(stacks: list[str], top: int, prefixes=("bushub/", "buswire/")) -> list[list[str]]:
    """The project's own functions by inclusive samples (their whole subtree)."""
    parsed = [(f, n) for f, n in _parse(stacks) if f and f[-1].split("|")[0] not in IDLE_LEAVES]
    total = sum(n for _, n in parsed) or 1
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in parsed:
        own[frames[-1]] += n
        for f in set(frames):
            where = f.partition("|")[2]
            if where.startswith(prefixes) and not where.startswith(_ENTRY_POINTS):
                incl[f] += n
    rows = []
    for key, n in incl.most_common(top):
        func, _, where = key.partition("|")
        rows.append(
            [f"`{func}`", f"`{where}`", f"{100 * n / total:.1f}", f"{100 * own[key] / total:.1f}"]
        )
    return rows
