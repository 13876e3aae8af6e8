"""The Markdown report: one function per section, in the order the reader meets them."""

import functools
import statistics
from collections.abc import Callable
from typing import Any

from busbench.report.figures import ERROR_KEYS, phase_figures
from busbench.report.resume import resume_markdown, resume_sections
from busbench.report.stormfigures import TARGET_COUNT, TARGET_S

LOADGEN_SATURATED = 0.85
SERVER_LABEL = {
    "hub": "bushub (2 nodes)",
    "floor": "floor (2 procs)",
    "stock": "stock proxy (1 proc)",
}
RATE_HELD = 0.97  # achieved / asked rate below this: the fixed rate was not held
LAG_LIMIT_MS = 20.0  # send lag p99 above this: the generator was starved of CPU

Row = list[str]


def markdown(out: dict[str, Any]) -> str:
    s, c = out["summary"], out["config"]
    if c.get("resume_only"):
        return resume_markdown(out)
    med = s["medians"]
    sections = [
        _setup_section(out),
        _targets_section(s, c),
        _fixed_rate_section(med, c),
        _saturation_section(med, c),
        _one_pair_section(med, c),
        _idle_section(s["idle"]),
        _idle_agents_section(s["idle"], s.get("idle_skipped") or []),
        _storm_section(s.get("storm") or [], s.get("storm_skipped")),
        _loss_section(med, s["drops"]),
        _load_generator_section(med),
        _machine_section(s["per_rep"]),
        _repetitions_section(s["per_rep"]),
        *(_profile_section(prof) for prof in out.get("profiles") or []),
    ]
    if s.get("resume"):
        sections.append(resume_sections(s["resume"], c))
    # Every block (heading, list, table, paragraph) is followed by a blank line.
    lines = [line for blocks in sections for block in blocks for line in (block, "")]
    if out.get("logs"):
        lines.append(f"Child logs kept in `{out['logs']}`.")
    return "\n".join(lines)


# ---- formatting ------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


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


def _table(header: list[str], rows: list[Row], align_first: int = 1) -> str:
    align = ["---"] * align_first + ["---:"] * (len(header) - align_first)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**not met**")


# ---- setup -----------------------------------------------------------------------


def _setup_section(out: dict[str, Any]) -> list[str]:
    """The title, what ran where and how, and how CPU per message is counted."""
    bullets = [
        f"- Command: `{out['command']}`",
        f"- Machine: {out['machine']}",
        f"- Host: {out['host']}; {out['versions']}",
        *_workload_bullets(out["config"], out["summary"]["ext"]),
        *_run_bullets(out),
    ]
    return [
        "# bushub-bench: workload R",
        "\n".join(bullets),
        "CPU µs/msg: utime+stime from `/proc/<pid>/stat` over the measured window, summed "
        "over the server's processes (two hub nodes, two floor processes, the one stock "
        "process), divided by messages relayed (a round trip is two relayed messages). "
        "Redis and the load generator are reported apart, per relayed message too.",
    ]


def _workload_bullets(c: dict[str, Any], extensions: dict[str, str | None]) -> list[str]:
    return [
        f"- Workload: K = {c['pairs']} pairs, `a_i` on hub node 1, `b_i` on node 2, `b_i` "
        "echoes every message to `a_i`; the same clients and payloads for every server.",
        f"- Fixed rate: {c['rate']:,.0f} round trips/s overall (open loop, sends on a clock, "
        f"{c['rate'] / c['pairs']:,.1f}/s per pair), {c['fixed_seconds']:g} s measured after "
        f"{c['warmup']:g} s warm-up. Saturation: {c['inflight']} messages in flight per pair "
        f"(closed loop), {c['sat_seconds']:g} s measured. One pair: {c['solo_rate']:g} rt/s "
        f"fixed and {c['inflight']} in flight, {c['solo_seconds']:g} s each, JSON task.",
        f"- Repetitions: {c['reps']}, alternating hub, floor, stock; every figure is the "
        "median over repetitions, error counts are sums."
        + (" **Fewer than 3: not a median.**" if c["reps"] < 3 else ""),
        f"- Clients offer permessage-deflate: {c['compression']} (the stock proxy client's "
        f"`websockets.connect()` offers deflate). Negotiated: "
        + ", ".join(f"{k}: `{v or 'none'}`" for k, v in extensions.items()),
    ]


def _run_bullets(out: dict[str, Any]) -> list[str]:
    """The code and limits the run had, how long it took, and how busy the machine was."""
    bullets = []
    if out.get("code"):
        bullets.append(f"- Code: {out['code']}")
    if out.get("hub_argv"):
        bullets.append(f"- Hub node: `{out['hub_argv']}`")
    nof = out["nofile"]
    bullets.append(
        f"- RLIMIT_NOFILE: soft {nof['soft']}, hard {nof['hard']} (needed {nof['wanted']})"
        + (f" — **{nof['note']}**" if nof.get("note") else "")
    )
    bullets.append(f"- Elapsed: {out['elapsed_s']:.0f} s")
    noise = _noise(out["summary"])
    if noise is not None and noise > 0.5:
        bullets.append(
            f"- **Noisy run: other processes took a median of {noise:.2f} of the 2 cores "
            "during the measured windows. Latency and saturation throughput suffer first; "
            "CPU per message, which each process accounts for itself, is the robust figure.**"
        )
    return bullets


# ---- targets ---------------------------------------------------------------------


def _targets_section(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    return [
        "## Targets (JSON task payload unless said)",
        _table(["figure", "hub", "floor / other", "ratio", "target", "verdict"], targets(s, c)),
    ]


def targets(summary: dict[str, Any], config: dict[str, Any]) -> list[Row]:
    """One row per target: hub against floor, idle sockets, MsgPack against JSON."""
    med = summary["medians"]
    hub, floor = med.get("hub", {}), med.get("floor", {})
    return [
        *_relay_targets(hub, floor, config["rate"]),
        *_idle_targets(summary["idle"], summary.get("idle_skipped") or []),
        *_msgpack_targets(hub),
        *_storm_targets(summary.get("storm") or []),
    ]


_TASK_FIXED, _TASK_SATURATION = "task-json/fixed", "task-json/saturation"
# (label, phase, figure, limit on hub / floor, whether lower is better)
_RELAY_TARGETS = (
    ("hub CPU µs/msg, fixed rate (JSON task)", _TASK_FIXED, "server_us", 0.8, True),
    ("hub CPU µs/msg, saturation (JSON task)", _TASK_SATURATION, "server_us", 0.8, True),
    ("p99 RTT at the fixed rate (JSON task)", _TASK_FIXED, "p99", 1.2, True),
    ("saturation round trips/s (JSON task)", _TASK_SATURATION, "rt_per_s", 1.2, False),
)


def _relay_targets(hub: dict[str, Any], floor: dict[str, Any], rate: float) -> list[Row]:
    rows = []
    for label, phase, key, limit, lower_is_better in _RELAY_TARGETS:
        h = hub.get(phase, {}).get(key)
        f = floor.get(phase, {}).get(key)
        r = _ratio_val(h, f)
        ok = None if r is None else (r <= limit if lower_is_better else r >= limit)
        sign = "<=" if lower_is_better else ">="
        digits = 2 if key == "p99" else 1
        rows.append(
            [
                label,
                _f(h, digits),
                _f(f, digits),
                _ratio(h, f) + _relay_target_caveat(key, phase, hub, floor, rate),
                f"{sign} {limit}x floor",
                _verdict(ok),
            ]
        )
    return rows


def _relay_target_caveat(
    key: str, phase: str, hub: dict[str, Any], floor: dict[str, Any], rate: float
) -> str:
    """Why a ratio may not mean what it says: the generator, not the server, was the limit."""
    if key == "rt_per_s" and any(
        (side.get(phase, {}).get("loadgen_util_max") or 0) > LOADGEN_SATURATED
        for side in (hub, floor)
    ):
        return " (load generator saturated: lower bound)"
    if key == "p99":
        flagged = [
            name
            for name, side in (("hub", hub), ("floor", floor))
            if _rate_note(side.get(phase, {}), rate)
        ]
        if flagged:
            return f" ({' and '.join(flagged)}: rate not held or sends late)"
    return ""


def _idle_targets(idle: dict[str, dict[str, Any]], skipped: list[Any]) -> list[Row]:
    """The largest count measured: RSS per socket and whether 10,000 sockets held, per
    hub measurement; then the scale targets (CPU, Redis commands and RSS per idle
    socket, 100,000 sockets held a minute) for the hub with the run's client offer."""
    if not idle:
        return []
    top = max(m["count"] for m in idle.values())
    at_top = [m for m in idle.values() if m["count"] == top]
    idle_floor = next((m for m in at_top if m["server"] == "floor"), None)
    floor_kb = idle_floor["kb_per_conn"] if idle_floor else None
    hub = [m for m in at_top if m["server"] == "hub"]
    rss = [
        [
            f"RSS per idle connection ({m['opened']:,} sockets, client offers {m['compression']})",
            _f(m["kb_per_conn"]),
            _f(floor_kb),
            _ratio(m["kb_per_conn"], floor_kb),
            "<= 16 KB",
            _verdict(m["kb_per_conn"] is not None and m["kb_per_conn"] <= 16),
        ]
        for m in hub
    ]
    rows = rss + [_ten_thousand_row(m["label"], m, idle_floor) for m in hub]
    if hub:
        big = [s for s in skipped if s["server"] == "hub" and s["count"] >= 100_000]
        rows += _scale_rows(hub[0], idle_floor, big[0]["reason"] if big else "")
    return rows


# (label, figure, digits, limit): the scale issue's targets for idle agent sockets
_SCALE_TARGETS = (
    ("node CPU µs per idle socket per s", "server_us_per_sock_s", 2, 3.0),
    ("Redis commands per idle socket per s, at rest", "redis_cmds_per_sock_s", 4, 0.01),
    ("RSS KB per idle socket", "kb_per_conn", 1, 12.0),
)


def _scale_rows(m: dict[str, Any], idle_floor: dict[str, Any] | None, why_not: str) -> list[Row]:
    rows = []
    for label, key, digits, limit in _SCALE_TARGETS:
        h = m.get(key)
        f = idle_floor.get(key) if idle_floor else None
        rows.append(
            [
                f"Scale: {label} ({m['opened']:,} agents, client offers {m['compression']})",
                _f(h, digits),
                _f(f, digits),
                _ratio(h, f),
                f"<= {limit:g}",
                _verdict(None if h is None else h <= limit),
            ]
        )
    held = None
    if m["count"] >= 100_000:
        held = (
            m["opened"] == m["count"]
            and m["still_open"] == m["count"]
            and not m["errors"]
            and not m["closed_by_server"]
            and m["alive_after"]
            and (m.get("hold_s") or 0) + (m.get("window_s") or 0) >= 60
        )
    rows.append(
        [
            "Scale: 100,000 idle agent sockets on one node, held a minute",
            f"{m['still_open']:,}/{m['count']:,} open; refused: {_counts(m['errors'])}; "
            f"closed: {_counts(m['closed_by_server'])}",
            "",
            "",
            "100,000, no errors, >= 60 s",
            _verdict(held)
            if held is not None
            else f"not tried (ran {m['count']:,}{'; ' + why_not if why_not else ''})",
        ]
    )
    return rows


def _ten_thousand_row(label: str, m: dict[str, Any], idle_floor: dict[str, Any] | None) -> Row:
    held = None
    if m["count"] >= 10000:
        held = (
            m["opened"] == m["count"]
            and m["still_open"] == m["count"]
            and not m["errors"]
            and not m["closed_by_server"]
            and m["alive_after"]
        )
    return [
        f"10,000 concurrent idle connections on one node ({label})",
        f"{m['still_open']:,}/{m['count']:,} open; refused: "
        f"{_counts(m['errors'])}; closed: {_counts(m['closed_by_server'])}",
        f"{idle_floor['still_open']:,}/{idle_floor['count']:,} open" if idle_floor else "-",
        "",
        "10,000, no errors",
        _verdict(held) if held is not None else f"not tried (ran {m['count']:,})",
    ]


def _msgpack_targets(hub: dict[str, Any]) -> list[Row]:
    """MsgPack audio against JSON audio on the hub: smaller frames, fewer bytes, less CPU."""
    aj, am = hub.get("audio-json/fixed"), hub.get("audio-msgpack/fixed")
    if not (aj and am):
        return []
    return [
        [
            "MsgPack audio vs JSON audio: bytes per message",
            f"{am['request_bytes']:,} B",
            f"{aj['request_bytes']:,} B",
            _ratio(am["request_bytes"], aj["request_bytes"]),
            "< 1 (MsgPack / JSON)",
            _verdict(am["request_bytes"] < aj["request_bytes"]),
        ],
        _msgpack_row(
            "MsgPack audio vs JSON audio: bytes the hubs write per relayed message "
            "(sockets and Redis, after deflate)",
            am.get("server_wbytes"),
            aj.get("server_wbytes"),
            0,
        ),
        *(
            _msgpack_row(
                f"MsgPack audio vs JSON audio: hub CPU µs/msg, {kind}",
                hub.get(f"audio-msgpack/{kind}", {}).get("server_us"),
                hub.get(f"audio-json/{kind}", {}).get("server_us"),
                1,
            )
            for kind in ("fixed", "saturation")
        ),
    ]


def _msgpack_row(label: str, msgpack_figure: Any, json_figure: Any, digits: int) -> Row:
    r = _ratio_val(msgpack_figure, json_figure)
    return [
        label,
        _f(msgpack_figure, digits),
        _f(json_figure, digits),
        _ratio(msgpack_figure, json_figure),
        "< 1 (MsgPack / JSON)",
        _verdict(None if r is None else r < 1),
    ]


# ---- relay phases ----------------------------------------------------------------

_PhaseRow = Callable[[str, str, dict[str, Any]], Row]
_RatioRow = Callable[[str, dict[str, Any], dict[str, Any]], Row]


def _hub_and_floor_rows(
    med: dict[str, Any], combos: list[str], kind: str, row: _PhaseRow, ratios: _RatioRow
) -> list[Row]:
    """Per payload: the hub's row, the floor's, and hub/floor ratios when both ran."""
    rows = []
    for combo in combos:
        name = f"{combo}/{kind}"
        h, f = med.get("hub", {}).get(name), med.get("floor", {}).get(name)
        rows += [row(combo, label, m) for label, m in (("hub", h), ("floor", f)) if m]
        if h and f:
            rows.append(ratios(combo, h, f))
    return rows


_FIXED_RATE_COLUMNS = [
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
]


def _fixed_rate_section(med: dict[str, Any], c: dict[str, Any]) -> list[str]:
    row = functools.partial(_fixed_rate_row, rate=c["rate"])
    rows = _hub_and_floor_rows(med, c["combos"], "fixed", row, _fixed_rate_ratios)
    return [
        f"## Fixed rate: {c['rate']:,.0f} round trips/s over {c['pairs']} pairs",
        _table(_FIXED_RATE_COLUMNS, rows, 2),
        "*frame B*: the request as the client sends it. *server writes B/msg*: bytes the "
        "server processes passed to write syscalls (`wchar` of `/proc/<pid>/io`: client "
        "sockets after permessage-deflate, plus Redis traffic) per relayed message. "
        "RTT is measured from the moment the load generator hands the request to its "
        "socket to the moment the reply is read; *send lag* is how late sends left "
        "against their clock (a large lag means the generator could not keep the rate).",
    ]


def _fixed_rate_row(combo: str, label: str, m: dict[str, Any], rate: float) -> Row:
    return [
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
        _rate_note(m, rate),
    ]


def _fixed_rate_ratios(combo: str, h: dict[str, Any], f: dict[str, Any]) -> Row:
    return [
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


_SATURATION_COLUMNS = [
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
]


def _saturation_section(med: dict[str, Any], c: dict[str, Any]) -> list[str]:
    rows = _hub_and_floor_rows(med, c["combos"], "saturation", _saturation_row, _saturation_ratios)
    return [
        f"## Saturation: {c['inflight']} in flight per pair, {c['pairs']} pairs",
        _table(_SATURATION_COLUMNS, rows, 2),
    ]


def _saturation_row(combo: str, label: str, m: dict[str, Any]) -> Row:
    saturated = m["loadgen_util_max"] > LOADGEN_SATURATED
    return [
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
        "**saturated: lower bound**" if saturated else "",
    ]


def _saturation_ratios(combo: str, h: dict[str, Any], f: dict[str, Any]) -> Row:
    return [
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


def _one_pair_section(med: dict[str, Any], c: dict[str, Any]) -> list[str]:
    solo = {
        srv: (med.get(srv, {}).get("solo/fixed"), med.get(srv, {}).get("solo/saturation"))
        for srv in ("hub", "floor", "stock")
    }
    rows = [_one_pair_row(srv, fx, sat) for srv, (fx, sat) in solo.items() if fx and sat]
    for other in ("floor", "stock"):
        if all(solo["hub"]) and all(solo[other]):
            rows.append(_one_pair_ratios(other, solo["hub"], solo[other]))
    columns = [
        "server",
        f"p50 ms @{c['solo_rate']:g}/s",
        "p99 ms",
        "p99.9 ms",
        "CPU µs/msg @fixed",
        f"rt/s, {c['inflight']} in flight",
        "CPU µs/msg @saturation",
        "loadgen util",
    ]
    return [
        "## One pair: hub vs floor vs today's stock proxy (JSON task)",
        _table(columns, rows),
        "The hub relays through two processes and Redis; the stock proxy is one process "
        "with the echo agent inside it (its CPU includes the agent's bus and the "
        "serializer's decode and encode of every message).",
    ]


def _one_pair_row(srv: str, fx: dict[str, Any], sat: dict[str, Any]) -> Row:
    return [
        SERVER_LABEL[srv],
        _f(fx["p50"], 2),
        _f(fx["p99"], 2),
        _f(fx["p999"], 2),
        _f(fx["server_us"]),
        _f(sat["rt_per_s"], 0),
        _f(sat["server_us"]),
        _f(sat["loadgen_util"], 2),
    ]


def _one_pair_ratios(other: str, hub: tuple[Any, Any], them: tuple[Any, Any]) -> Row:
    (hub_fx, hub_sat), (ofx, osat) = hub, them
    return [
        f"*hub / {other}*",
        _ratio(hub_fx["p50"], ofx["p50"]),
        _ratio(hub_fx["p99"], ofx["p99"]),
        _ratio(hub_fx["p999"], ofx["p999"]),
        _ratio(hub_fx["server_us"], ofx["server_us"]),
        _ratio(hub_sat["rt_per_s"], osat["rt_per_s"]),
        _ratio(hub_sat["server_us"], osat["server_us"]),
        "",
    ]


# ---- idle sockets, losses, the generator and the machine -------------------------

_IDLE_COLUMNS = [
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
]


def _idle_section(idle: dict[str, dict[str, Any]]) -> list[str]:
    if not idle:
        return []
    rows = [
        [
            m["label"],
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
        for m in idle.values()
    ]
    return [
        "## Idle connections (node 1 only)",
        _table(_IDLE_COLUMNS, rows),
        "Each measurement uses a freshly started server process (node 1 of its kind, on "
        "the same Redis), warmed with 100 sockets opened and closed. The sockets are agent "
        "pairs watching each other (`/ws/idleA{n}?peer=idleB{n}` and "
        "`/ws/idleB{n}?peer=idleA{n}`), opened 32 at a time per load generator; RSS "
        "(`VmRSS`) is read before and 2-15 s after the last one opened. The floor never "
        "negotiates permessage-deflate, whatever the client offers.",
    ]


_IDLE_AGENT_COLUMNS = [
    "server",
    "client offers",
    "sockets",
    "opened / errors",
    "node µs CPU /socket/s",
    "Redis cmds /socket/s",
    "Redis CPU %",
    "RSS KB/socket",
    "closed by server",
    "loadgen µs /socket/s",
    "other procs, cores",
]


def _idle_agents_section(idle: dict[str, dict[str, Any]], skipped: list[Any]) -> list[str]:
    if not idle and not skipped:
        return []
    rows = [
        [
            m["label"],
            _offer(m),
            f"{m['count']:,}",
            f"{m['opened']:,} / {_counts(m['errors'])}",
            _f(m.get("server_us_per_sock_s"), 2),
            _f(m.get("redis_cmds_per_sock_s"), 4),
            _f(_pct_value(m.get("redis_cpu_share")), 1),
            _f(m["kb_per_conn"]),
            _counts(m["closed_by_server"]),
            _f(m.get("loadgen_us_per_sock_s"), 2),
            _f(m.get("others_cores"), 2),
        ]
        for m in idle.values()
    ]
    pings = sorted(
        {m["ping_interval"] for m in idle.values() if m.get("ping_interval") is not None}
    )
    windows = [m["window_s"] for m in idle.values() if m.get("window_s")]
    holds = sorted({m["hold_s"] for m in idle.values() if m.get("hold_s")})
    when = f"A quiet window of {min(windows):.0f} s" if windows else "A quiet window"
    when += " after the sockets settled"
    if holds:
        when += f" and were held {', '.join(f'{h:g}' for h in holds)} s more"
    keepalive = ""
    if pings:
        keepalive = (
            " Clients keep websockets' keepalive: "
            + ", ".join(f"a ping every {p:g} s" if p else "no pings" for p in pings)
            + "."
        )
    spread = [
        f"{m['label']}, {m['count']:,}: {m['loadgens']} generator(s), "
        f"{m['source_addresses']} address(es)"
        for m in idle.values()
        if m.get("loadgens")
    ]
    blocks = [
        "## Idle agents",
        _table(_IDLE_AGENT_COLUMNS, rows),
        when
        + "."
        + keepalive
        + " *node µs CPU*: utime+stime of the server process from `/proc/<pid>/stat` over "
        "the window, per socket per second. *Redis cmds*: the change in "
        "`total_commands_processed` (`INFO`) of the bench's own redis-server, less the "
        "bench's one `INFO` in the window, per socket per second; *Redis CPU*: "
        "`used_cpu_sys + used_cpu_user` over the window. *loadgen*: the clients' CPU (their "
        "pings). *other procs*: cores the rest of the machine took (noise).",
    ]
    if spread:
        blocks.append("Clients: " + "; ".join(spread) + " (loopback source addresses 127.0.0.x).")
    by_command = [
        f"{m['label']}, {m['count']:,}: "
        + ", ".join(f"{cmd} {n:,}" for cmd, n in list(m["redis_by_command"].items())[:6])
        for m in idle.values()
        if m.get("redis_by_command")
    ]
    if by_command:
        blocks.append("Redis commands in the window: " + "; ".join(by_command) + ".")
    if skipped:
        blocks.append(
            "Not measured: "
            + "; ".join(f"{s['label']} at {s['count']:,} sockets ({s['reason']})" for s in skipped)
            + "."
        )
    return blocks


# ---- the reconnect storm ---------------------------------------------------------


def _storm_targets(storms: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for m in storms:
        verdict = _verdict(m["met"])
        if m["count"] < TARGET_COUNT:
            verdict = (
                f"{'met' if m['met'] else 'not met'} at {m['count']:,} ({TARGET_COUNT:,} not tried)"
            )
        rows.append(
            [
                f"Storm: {m['count']:,} sockets of a SIGKILLed node back on two survivors",
                f"all back in {_f(m['all_back_s'], 2)} s; gave up {m['gave_up']:,}"
                + (f", unfinished {m['unfinished']:,}" if m["unfinished"] else ""),
                "",
                "",
                f"{TARGET_COUNT:,}, <= {TARGET_S:g} s, 0 giving up",
                verdict,
            ]
        )
    return rows


def _spread(d: dict[str, float] | None, digits: int = 2) -> str:
    if not d:
        return "-"
    return " / ".join(_f(d[k], digits) for k in ("p50", "p90", "p99"))


def _storm_rows(m: dict[str, Any]) -> list[Row]:
    surv = m["per_survivor"]
    cpu = m["survivors_cpu"]
    pct = _pct_value
    return [
        [
            "sockets on the killed node",
            f"{m['opened']:,}/{m['count']:,} opened"
            + (f" (refused: {_counts(m['open_errors'])})" if m["open_errors"] else "")
            + f"; peer announced on {m['registry_before']:,}",
        ],
        [
            "re-established / gave up / unfinished",
            f"{m['back']:,} / {m['gave_up']:,} / {m['unfinished']:,}"
            + (f" ({_counts(m['gave_up_by'])})" if m["gave_up_by"] else ""),
        ],
        ["all re-established, s after the kill", _f(m["all_back_s"], 2)],
        ["re-established p50 / p90 / p99, s", _spread(m["back_s"])],
        [
            "loss seen by the clients p50 / p99, s",
            f"{_f((m['lost_s'] or {}).get('p50'), 3)} / {_f((m['lost_s'] or {}).get('p99'), 3)}",
        ],
        [
            "handshakes/s, peak (1 s) / mean from the kill",
            f"{_f(m['handshakes_peak_per_s'], 0)} / {_f(m['handshakes_mean_per_s'], 0)}",
        ],
        *[
            [
                f"  on {s['name']}: back, peak / mean per s, sockets after",
                f"{s['back']:,}, {_f(s['peak_per_s'], 0)} / {_f(s['mean_per_s'], 0)}, "
                f"{_f(s['connections_after'], 0)}",
            ]
            for s in surv
        ],
        [
            "handshakes per second from the kill",
            ", ".join(str(n) for n in m["handshakes_per_s"]) or "-",
        ],
        ["attempts (all clients) / most by one client", f"{m['attempts']:,} / {m['attempts_max']}"],
        ["HTTP 503 received", f"{m['http_503']:,}"],
        [
            "other failed attempts",
            _counts({k: v for k, v in m["failures"].items() if k != "HTTP 503"}),
        ],
        [
            "peer announced again (registry message) / p99 s",
            f"{m['registry_after']:,}/{m['back']:,} / "
            + _f((m["registry_after_s"] or {}).get("p99"), 2),
        ],
        [
            f"open {_f(m['settle_s'], 0)} s after the last came back / closed since",
            f"{_f(m['still_open'], 0)} / {_counts(m['closed_after'])}",
        ],
        [
            "Redis CPU %, peak / mean",
            f"{_f(pct(m['redis_cpu_peak']))} / {_f(pct(m['redis_cpu_mean']))}",
        ],
        [
            "Redis commands/s, peak / mean",
            f"{_f(m['redis_cmds_peak'], 0)} / {_f(m['redis_cmds_mean'], 0)}",
        ],
        *[
            [
                f"{name} CPU cores, peak / mean",
                f"{_f(c['peak_cores'], 2)} / {_f(c['mean_cores'], 2)}",
            ]
            for name, c in cpu.items()
        ],
        [
            "load generators, cores (mean) / machine busy, cores (mean)",
            f"{_f(m['loadgen_cores'], 2)} / {_f(m['machine_cores'], 2)}",
        ],
    ]


def _storm_section(storms: list[dict[str, Any]], skipped: str | None) -> list[str]:
    if not storms and not skipped:
        return []
    blocks = ["## Reconnect storm"]
    if skipped:
        blocks.append(f"Not measured: {skipped}.")
    for m in storms:
        p = m["policy"]
        blocks += [
            _table(["figure", f"{m['count']:,} sockets"], _storm_rows(m)),
            "Three hub nodes on one Redis of their own; the sockets are agent pairs watching "
            "each other (`/ws/stA{n}?peer=stB{n}` and the reverse) on node 1, held by "
            "a lean client (`busbench.rawws`: the upgrade, then frames read; it answers "
            "the hub's pings, sends none and offers no compression), from "
            f"{m['loadgens']} load generator(s) over {m['source_addresses']} loopback source "
            "address(es). "
            + (
                f"Node 1 ({m['doomed_workers']} worker processes: `--workers "
                f"{m['doomed_workers']}`) then gets SIGKILL, its supervisor and every worker. "
                if m.get("doomed_workers", 1) > 1
                else "Node 1 then gets SIGKILL. "
            )
            + "Each client does what the reconnecting "
            "proxies do (`busclient.reconnecting.ReconnectPolicy`): the n-th attempt of an "
            f"outage waits min({p.get('max_delay'):g}, {p.get('initial_delay'):g} * "
            f"{p.get('multiplier'):g}^(n-1)) s times a random factor in "
            f"({1 - p.get('jitter', 0):g}, 1], a handshake may take {_f(m['open_timeout'], 0)} s, "
            "an HTTP 5xx or a network failure is retried the same way (after a refusal "
            "with `Retry-After`, at least that long and up to half as long again), and a "
            "client gives up "
            f"{p.get('max_elapsed'):g} s after its loss. The survivor is picked "
            + (
                "by the client's index (each pair split across the two)"
                if m["pick"] == "alternate"
                else "at random on each attempt"
            )
            + ", standing in for the load balancer. Times are from the kill "
            "(`time.monotonic()`, one clock for all processes); handshakes are counted where "
            "the clients saw them complete. Redis: `used_cpu_sys + used_cpu_user` and "
            f"`total_commands_processed` (`INFO`, the bench's own left out) every "
            f"{_f(m['sample_s'], 1)} s from the kill until every client was back; survivors' "
            "CPU from `/proc/<pid>/stat` over the same samples.",
        ]
    return blocks


def _pct_value(share: Any) -> float | None:
    return None if share is None else 100 * share


def _loss_section(med: dict[str, Any], drops: dict[str, dict[str, float]]) -> list[str]:
    rows = [_loss_row(srv, phases, drops.get(srv)) for srv, phases in med.items()]
    return [
        "## Loss and duplication (sums over repetitions; must all be 0)",
        _table(["server", "sent", "ok", *ERROR_KEYS, "hub dropped counters"], rows),
    ]


def _loss_row(srv: str, phases: dict[str, Any], drops: dict[str, float] | None) -> Row:
    sent = sum(m["sent"] for m in phases.values())
    ok = sum(m["ok"] for m in phases.values())
    errors = [sum(m["errors"][k] for m in phases.values()) for k in ERROR_KEYS]
    dropped = ", ".join(f"{k} {v:.0f}" for k, v in (drops or {}).items()) or "-"
    return [srv, _f(sent), _f(ok), *(_f(n) for n in errors), dropped]


def _load_generator_section(med: dict[str, Any]) -> list[str]:
    worst = sorted(
        (
            (m["loadgen_util_max"], srv, name)
            for srv, phases in med.items()
            for name, m in phases.items()
        ),
        reverse=True,
    )
    busy = [w for w in worst if w[0] > LOADGEN_SATURATED]
    top = ", ".join(f"{srv} {name} {u:.2f}" for u, srv, name in worst[:5])
    verdict = (
        f"**{len(busy)} phase(s) above {LOADGEN_SATURATED:.2f} of a core: their saturation "
        "figures are lower bounds for the server.**"
        if busy
        else f"No phase above {LOADGEN_SATURATED:.2f}: the generator was not the bottleneck."
    )
    return [
        "## Load generator",
        f"Highest load-generator utilisation (one core = 1.00): {top}.\n{verdict}",
    ]


def _machine_section(per_rep: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    rows = []
    for srv, phases in per_rep.items():
        row = _machine_row(srv, [r for reps in phases.values() for r in reps])
        if row is not None:
            rows.append(row)
    columns = [
        "server",
        "windows",
        "machine busy, cores (median)",
        "other processes, cores (median)",
        "(max)",
        "softirq cores (median)",
        "steal (max)",
    ]
    return [
        "## The machine during the measured windows",
        _table(columns, rows),
        "From `/proc/stat` over the same windows. *Other processes* is user+system time "
        "not spent by the measured processes (server, Redis, load generator): other "
        "people's work on the shared cores. Softirq time (loopback TCP delivery, partly) "
        "is charged to no process, so it is in none of the per-process figures.",
    ]


def _machine_row(srv: str, figs: list[dict[str, Any]]) -> Row | None:
    """None when no window of this server read ``/proc/stat``."""

    def present(key: str) -> list[float]:
        return [r[key] for r in figs if r[key] is not None]

    others = present("others_cores")
    if not others:
        return None
    return [
        srv,
        str(len(figs)),
        _f(statistics.median(present("machine_busy")), 2),
        _f(statistics.median(others), 2),
        _f(max(others), 2),
        _f(statistics.median(present("softirq_cores")), 2),
        _f(max(present("steal_cores")), 2),
    ]


# (phase, figure, digits) shown per repetition, for each server that ran the phase
_REPETITION_FIGURES = (
    ("task-json/fixed", "server_us", 1),
    ("task-json/fixed", "p99", 2),
    ("task-json/saturation", "rt_per_s", 0),
    ("task-json/saturation", "server_us", 1),
    ("solo/fixed", "server_us", 1),
    ("solo/saturation", "rt_per_s", 0),
)


def _repetitions_section(per_rep: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    rows = []
    for srv in ("hub", "floor", "stock"):
        reps = per_rep.get(srv, {})
        for name, key, digits in _REPETITION_FIGURES:
            if name in reps:
                per = " / ".join(_f(r[key], digits) for r in reps[name])
                rows.append([srv, f"{name} {key}", per])
    return [
        "## Repetitions (JSON task payload)",
        _table(["server", "figure", "per repetition"], rows, 2),
    ]


# ---- profiles --------------------------------------------------------------------


def _profile_section(prof: dict[str, Any]) -> list[str]:
    native = prof["mode"] == "native"
    intro = _profile_intro(prof, native)
    if prof.get("errors"):
        intro += f"\npy-spy errors: {prof['errors']}"
    blocks = [
        "## Profile: both hub nodes under the fixed-rate JSON task load"
        + (" (native frames)" if native else ""),
        intro,
        _table(
            ["#", "function", "where", "own %", "total %"],
            [[str(i + 1), *row] for i, row in enumerate(prof["table"])],
            3,
        ),
    ]
    # Native frames charge time to C functions; the project's Python functions are
    # ranked from the Python-frame profile only.
    if prof.get("project") and not native:
        blocks += [
            "The project's own functions by total (the function and all it calls):",
            _table(["function", "where", "total %", "own %"], prof["project"], 2),
        ]
    return blocks


def _profile_intro(prof: dict[str, Any], native: bool) -> str:
    ph = phase_figures(prof["phase"])
    return (
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
