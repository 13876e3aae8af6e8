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
    rtt = phase.get("rtt_ms") or {}
    lag = phase.get("send_lag_ms") or {}

    def per_msg(seconds: float) -> float | None:
        return seconds * 1e6 / relayed if relayed else None

    counters = phase["counters"]
    return {
        "rt_per_s": phase["rt_per_s"],
        "server_us": per_msg(server_cpu),
        "redis_us": per_msg(cpu.get("redis", 0.0)),
        "loadgen_us": per_msg(cpu.get("loadgen", 0.0)),
        "server_cores": server_cpu / wall,
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
        idle[res["server"]] = {
            "count": res["count"],
            "opened": opened,
            "still_open": res["still_open"],
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
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _ratio(a: Any, b: Any) -> str:
    if a is None or b in (None, 0):
        return "–"
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
    return "–" if ok is None else ("**met**" if ok else "**not met**")


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
    idle = summary["idle"].get("hub")
    idle_floor = summary["idle"].get("floor")
    if idle:
        kb = idle["kb_per_conn"]
        rows.append(
            [
                f"RSS per idle connection ({idle['opened']:,} sockets)",
                _f(kb),
                _f(idle_floor["kb_per_conn"]) if idle_floor else "–",
                _ratio(kb, idle_floor["kb_per_conn"] if idle_floor else None),
                "<= 16 KB",
                _verdict(kb is not None and kb <= 16),
            ]
        )
        ok10k = None
        if idle["count"] >= 10000:
            ok10k = (
                idle["opened"] == idle["count"]
                and idle["still_open"] == idle["count"]
                and not idle["errors"]
                and idle["alive_after"]
            )
        rows.append(
            [
                "10,000 concurrent idle connections on one node",
                f"{idle['still_open']:,}/{idle['count']:,} open, errors {idle['errors'] or 0}",
                (
                    f"{idle_floor['still_open']:,}/{idle_floor['count']:,} open"
                    if idle_floor
                    else "–"
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
    if out.get("hub_argv"):
        add(f"- Hub node: `{out['hub_argv']}`")
    nof = out["nofile"]
    add(
        f"- RLIMIT_NOFILE: soft {nof['soft']}, hard {nof['hard']} (needed {nof['wanted']})"
        + (f" — **{nof['note']}**" if nof.get("note") else "")
    )
    add(f"- Elapsed: {out['elapsed_s']:.0f} s")
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
                    _f(m["rt_per_s"], 0),
                    _f(m["p50"], 2),
                    _f(m["p99"], 2),
                    _f(m["p999"], 2),
                    _f(m["server_us"]),
                    _f(m["server_cores"], 2),
                    _f(m["redis_us"]),
                    _f(m["loadgen_us"]),
                    _f(m["loadgen_util"], 2),
                    _f(m["lag_p99"], 2),
                ]
            )
        if h and f:
            rows.append(
                [
                    combo,
                    "*hub/floor*",
                    "",
                    "",
                    _ratio(h["p50"], f["p50"]),
                    _ratio(h["p99"], f["p99"]),
                    _ratio(h["p999"], f["p999"]),
                    _ratio(h["server_us"], f["server_us"]),
                    _ratio(h["server_cores"], f["server_cores"]),
                    _ratio(h["redis_us"], f["redis_us"]),
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
                "bytes",
                "rt/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "server CPU µs/msg",
                "server cores",
                "Redis µs/msg",
                "loadgen µs/msg",
                "loadgen util",
                "send lag p99 ms",
            ],
            rows,
            2,
        )
    )
    add("")
    add(
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
    solo = {srv: (med.get(srv, {}).get("solo/fixed"), med.get(srv, {}).get("solo/saturation"))
            for srv in ("hub", "floor", "stock")}
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
                    f"{m['opened']:,}/{m['count']:,}",
                    f"{m['still_open']:,}",
                    str(m["errors"] or 0),
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
                    "opened",
                    "open after hold",
                    "errors",
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
            "Each idle socket is `/ws/idleN?peer=absentN` (a peer never connects), opened "
            "64 at a time; RSS (`VmRSS`) is read 2 s after the last one opened."
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
            + [", ".join(f"{k} {v:.0f}" for k, v in (drops or {}).items()) or "–"]
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

    prof = out.get("profile")
    if prof:
        add("## Profile: both hub nodes under the fixed-rate JSON task load")
        add("")
        ph = phase_figures(prof["phase"])
        add(
            f"{prof['tool']}; {prof['samples']:,} samples over "
            f"{prof['phase']['window_s']:.1f} s at {ph['rt_per_s']:,.0f} rt/s "
            f"(hub {_f(ph['server_us'])} µs/msg while profiled). Own time = samples where "
            "the function is the innermost Python frame; total = samples where it is on "
            "the stack."
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


def profile_samples(stacks: list[str]) -> int:
    return sum(n for _, n in _parse(stacks))


def profile_table(stacks: list[str], top: int) -> list[list[str]]:
    parsed = _parse(stacks)
    total = sum(n for _, n in parsed) or 1
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in parsed:
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    rows = []
    for key, n in own.most_common(top):
        func, _, where = key.partition("|")
        rows.append(
            [f"`{func}`", f"`{where}`", f"{100 * n / total:.1f}", f"{100 * incl[key] / total:.1f}"]
        )
    return rows
