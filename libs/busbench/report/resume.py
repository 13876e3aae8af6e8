"""The resume measurement's figures and report (``bushub-bench --resume``).

Pure functions of ``busbench.resume.run``'s result: the workload's three variants
(medians over repetitions, ratios to sessions off in the same run, the issue's
1.25x targets) and Redis memory and CPU per session.
"""

import statistics
from typing import Any

from busbench.report.figures import ERROR_KEYS, _figures_per_rep, _phase_medians

VARIANTS = ("off", "on-plain", "on-session")
LABEL = {
    "off": "sessions off",
    "on-plain": "on, plain sockets",
    "on-session": "on, session sockets",
}
LIMIT = 1.25  # the "within 1.25x of resume off in the same run"
# (label, figure, digits) held to LIMIT, per combination at the fixed rate
_TARGET_FIGURES = (("hub CPU µs/msg", "server_us", 1), ("p99 ms", "p99", 2))

Row = list[str]


def _ratio_val(a: Any, b: Any) -> float | None:
    return None if a is None or b in (None, 0) else float(a / b)


def _ratio(a: Any, b: Any) -> str:
    r = _ratio_val(a, b)
    return "-" if r is None else f"{r:.2f}x"


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _table(header: list[str], rows: list[Row], align_first: int = 1) -> str:
    align = ["---"] * align_first + ["---:"] * (len(header) - align_first)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *rows])


# ---- figures ---------------------------------------------------------------------


def memory_figures(v: dict[str, Any]) -> dict[str, Any]:
    """One memory variant: ``used_memory`` deltas per socket and CPU per message."""
    n, m = v["sessions"], v["messages"]
    mem = v["used_memory"]
    msgs = n * m
    kept = (mem["kept"] - mem["open"]) / n if n else None
    return {
        "kind": v["kind"],
        "combo": v["combo"],
        "sessions": n,
        "messages": m,
        "message_bytes": v["message_bytes"],
        "received": v["received"],
        "complete": v["arrived"] and v["announced"] and v["received"] == msgs,
        "open_b": (mem["open"] - mem["before"]) / n if n else None,
        "kept_b": kept,
        "kept_b_per_msg": kept / m if kept is not None and m else None,
        "away_b": (mem["away"] - mem["before"]) / n if n else None,
        "redis_us": v["redis_cpu_s"] * 1e6 / msgs if msgs else None,
        "hub_us": v["hub_cpu_s"] * 1e6 / msgs if msgs else None,
        "keys": v["keys"],
    }


def _per_rep_ratios(
    per: dict[str, dict[str, list[dict[str, Any]]]], variant: str, phase: str, key: str
) -> list[float]:
    """variant / off, repetition by repetition (each pair of runs side by side)."""
    on, off = per.get(variant, {}).get(phase, []), per.get("off", {}).get(phase, [])
    out = []
    for a, b in zip(on, off, strict=False):
        r = _ratio_val(a.get(key), b.get(key))
        if r is not None:
            out.append(r)
    return out


def resume_summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per variant and phase: per-repetition figures, medians and ratios to off."""
    per = _figures_per_rep(res.get("runs") or [])
    medians = {
        variant: {name: _phase_medians(reps) for name, reps in phases.items()}
        for variant, phases in per.items()
    }
    phases = list(dict.fromkeys(name for phases in per.values() for name in phases))
    ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in VARIANTS[1:]:
        for name in phases:
            for key in ("server_us", "p50", "p99", "redis_us", "rt_per_s"):
                reps = _per_rep_ratios(per, variant, name, key)
                ratios.setdefault(variant, {}).setdefault(name, {})[key] = {
                    "of_medians": _ratio_val(
                        medians.get(variant, {}).get(name, {}).get(key),
                        medians.get("off", {}).get(name, {}).get(key),
                    ),
                    "per_rep": reps,
                    "median_per_rep": statistics.median(reps) if reps else None,
                }
    drops: dict[str, dict[str, float]] = {}
    sessions: dict[str, dict[str, Any]] = {}
    for run in res.get("runs") or []:
        for reason, value in (run.get("drops") or {}).items():
            d = drops.setdefault(run["server"], {})
            d[reason] = d.get(reason, 0.0) + value
        for key, value in (run.get("session") or {}).items():
            s = sessions.setdefault(run["server"], {})
            if isinstance(value, dict):
                for k, v in value.items():
                    s.setdefault(key, {})[k] = s.get(key, {}).get(k, 0) + v
            else:
                s[key] = s.get(key, 0) + value
    memory = res.get("memory") or {}
    others = [
        r["others_cores"]
        for phases in per.values()
        for reps in phases.values()
        for r in reps
        if r.get("others_cores") is not None
    ]
    return {
        "others_cores": statistics.median(others) if others else None,
        "per_rep": per,
        "medians": medians,
        "ratios": ratios,
        "drops": drops,
        "sessions": sessions,
        "memory": [memory_figures(v) for v in memory.get("variants") or []],
        "hub_argv": res.get("hub_argv") or {},
        "memory_hub_argv": memory.get("hub_argv"),
    }


# ---- the report ------------------------------------------------------------------


def resume_sections(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    """Every block of the resume report, in order."""
    return [
        *_intro(s, c),
        *_targets(s, c),
        *_workload(s, c),
        *_loss(s),
        *_repetitions(s),
        *_memory(s["memory"], s.get("memory_hub_argv")),
    ]


def _intro(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    argv = s["hub_argv"]
    bullets = [
        f"- Workload R, K = {c['pairs']} pairs, in three variants alternating "
        f"{c['reps']} time(s) (medians over repetitions): *sessions off* (two nodes with "
        "`--resume-window 0`), *on, plain sockets* (two nodes with sessions on, "
        "sockets without a session: the delivery script instead of `PUBLISH`), *on, "
        "session sockets* (the same nodes; both ends of every pair a session socket, "
        "messages framed with positions, acknowledged every 64 messages or 200 ms).",
        f"- Fixed rate {c['rate']:,.0f} rt/s ({c['fixed_seconds']:g} s), saturation "
        f"{c['inflight']} in flight per pair ({c['sat_seconds']:g} s), after "
        f"{c['warmup']:g} s warm-up each; one Redis for all three.",
    ]
    if argv:
        bullets += [f"- Hub nodes, {side}: `{cmd}`" for side, cmd in argv.items()]
    if s.get("others_cores") is not None:
        bullets.append(
            f"- Other processes took a median of {s['others_cores']:.2f} of the 2 cores "
            "during the measured windows"
            + (
                ": **a noisy run; latency suffers first, CPU per message least.**"
                if s["others_cores"] > 0.5
                else "."
            )
        )
    return ["## Sessions (resume)", "\n".join(bullets)]


def _targets(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    med, ratios = s["medians"], s["ratios"]
    rows = []
    for combo in c.get("resume_combos") or []:
        phase = f"{combo}/fixed"
        for label, key, digits in _TARGET_FIGURES:
            off = med.get("off", {}).get(phase, {}).get(key)
            for variant in VARIANTS[1:]:
                on = med.get(variant, {}).get(phase, {}).get(key)
                r = ratios.get(variant, {}).get(phase, {}).get(key, {})
                ok = None if r.get("of_medians") is None else r["of_medians"] <= LIMIT
                per_rep = r.get("median_per_rep")
                rows.append(
                    [
                        f"{label}, {combo}, fixed rate: {LABEL[variant]}",
                        _f(off, digits),
                        _f(on, digits),
                        _ratio(on, off),
                        "-" if per_rep is None else f"{per_rep:.2f}x",
                        f"<= {LIMIT}x off",
                        "-" if ok is None else ("**met**" if ok else "**not met**"),
                    ]
                )
    header = ["figure", "off", "on", "on / off", "median of per-rep ratios", "target", "verdict"]
    return [
        "### Targets: sessions on against off, same run",
        _table(header, rows),
        "*on / off*: the ratio of the medians; *per-rep*: the median of the ratios of "
        "runs side by side (one repetition each), less exposed to the machine's drift.",
    ]


_WORKLOAD_COLUMNS = [
    "phase",
    "variant",
    "frame B",
    "rt/s",
    "p50 ms",
    "p99 ms",
    "hub CPU µs/msg",
    "Redis µs/msg",
    "Redis cores",
    "hub writes B/msg",
    "loadgen µs/msg",
    "loadgen util",
]


def _workload(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    med = s["medians"]
    rows = []
    for combo in c.get("resume_combos") or []:
        for kind in ("fixed", "saturation"):
            phase = f"{combo}/{kind}"
            off = med.get("off", {}).get(phase)
            for variant in VARIANTS:
                m = med.get(variant, {}).get(phase)
                if not m:
                    continue
                rows.append(_workload_row(phase, LABEL[variant], m))
                if variant != "off" and off:
                    rows.append(_workload_ratio(phase, f"*{variant} / off*", m, off))
    return [
        "### Workload R with sessions off and on",
        _table(_WORKLOAD_COLUMNS, rows, 2),
        "*frame B*: the request as the client's serializer makes it (a session socket "
        "adds 9 bytes of framing). CPU per relayed message from `/proc/<pid>/stat` over "
        "the window: *hub*, both nodes; *Redis*, the redis-server process.",
    ]


def _workload_row(phase: str, label: str, m: dict[str, Any]) -> Row:
    return [
        phase,
        label,
        _f(m["request_bytes"]),
        _f(m["rt_per_s"], 0),
        _f(m["p50"], 2),
        _f(m["p99"], 2),
        _f(m["server_us"]),
        _f(m["redis_us"]),
        _f(m["redis_cores"], 2),
        _f(m["server_wbytes"], 0),
        _f(m["loadgen_us"]),
        _f(m["loadgen_util"], 2),
    ]


def _workload_ratio(phase: str, label: str, m: dict[str, Any], off: dict[str, Any]) -> Row:
    return [
        phase,
        label,
        "",
        _ratio(m["rt_per_s"], off["rt_per_s"]),
        _ratio(m["p50"], off["p50"]),
        _ratio(m["p99"], off["p99"]),
        _ratio(m["server_us"], off["server_us"]),
        _ratio(m["redis_us"], off["redis_us"]),
        _ratio(m["redis_cores"], off["redis_cores"]),
        _ratio(m["server_wbytes"], off["server_wbytes"]),
        "",
        "",
    ]


def _loss(s: dict[str, Any]) -> list[str]:
    rows = []
    for variant in VARIANTS:
        phases = s["medians"].get(variant)
        if not phases:
            continue
        sent = sum(m["sent"] for m in phases.values())
        ok = sum(m["ok"] for m in phases.values())
        errors = [sum(m["errors"][k] for m in phases.values()) for k in ERROR_KEYS]
        drops = s["drops"].get(variant) or {}
        rows.append(
            [
                LABEL[variant],
                _f(sent),
                _f(ok),
                *(_f(n) for n in errors),
                ", ".join(f"{k} {v:.0f}" for k, v in sorted(drops.items())) or "-",
            ]
        )
    blocks = [
        "### Loss and duplication (sums over repetitions; must all be 0)",
        _table(["variant", "sent", "ok", *ERROR_KEYS, "hub dropped counters"], rows),
    ]
    sess = s["sessions"].get("on-session")
    if sess:
        taken = sess.get("taken") or 0
        blocks.append(
            f"Session sockets: {sess.get('sockets', 0):,} opened (resume results "
            + ", ".join(f"{k}: {v:,}" for k, v in sorted((sess.get("resume") or {}).items()))
            + f"); {sess.get('sent', 0):,} messages sent, {taken:,} taken; "
            f"{sess.get('acks_sent', 0):,} acknowledgements sent "
            f"({_f(taken / sess['acks_sent'] if sess.get('acks_sent') else None)} messages "
            f"each), {sess.get('acks_received', 0):,} received from the hub; "
            f"{sess.get('duplicates', 0):,} positions received twice, "
            f"{sess.get('malformed', 0):,} malformed frames."
        )
    return blocks


def _repetitions(s: dict[str, Any]) -> list[str]:
    rows = []
    for variant in VARIANTS:
        for phase, reps in s["per_rep"].get(variant, {}).items():
            if not phase.endswith("/fixed"):
                continue
            for key, digits in (("server_us", 1), ("p99", 2)):
                rows.append(
                    [LABEL[variant], f"{phase} {key}", " / ".join(_f(r[key], digits) for r in reps)]
                )
    if not rows:
        return []
    header = ["variant", "figure", "per repetition"]
    return ["### Repetitions (fixed rate)", _table(header, rows, 2)]


_MEMORY_COLUMNS = [
    "payload",
    "sockets",
    "frame B",
    "open: B/socket",
    "M kept: B/socket",
    "B per kept message",
    "closed: B/socket left",
    "Redis µs/msg",
    "hub µs/msg",
    "received",
]


def _memory(mem: list[dict[str, Any]], hub_argv: str | None) -> list[str]:
    if not mem:
        return []
    rows = []
    by_combo: dict[str, dict[str, dict[str, Any]]] = {}
    for m in mem:
        by_combo.setdefault(m["combo"], {})[m["kind"]] = m
        rows.append(
            [
                m["combo"],
                f"{m['sessions']:,} {m['kind']}",
                _f(m["message_bytes"]),
                _f(m["open_b"], 0),
                _f(m["kept_b"], 0),
                _f(m["kept_b_per_msg"], 0),
                _f(m["away_b"], 0),
                _f(m["redis_us"], 2),
                _f(m["hub_us"], 1),
                f"{m['received']:,}/{m['sessions'] * m['messages']:,}"
                + ("" if m["complete"] else " **incomplete**"),
            ]
        )
    for combo, kinds in by_combo.items():
        p, q = kinds.get("plain"), kinds.get("session")
        if p and q:
            rows.append(
                [
                    combo,
                    "*session - plain*",
                    "",
                    _f(_minus(q["open_b"], p["open_b"]), 0),
                    _f(_minus(q["kept_b"], p["kept_b"]), 0),
                    _f(_minus(q["kept_b_per_msg"], p["kept_b_per_msg"]), 0),
                    _f(_minus(q["away_b"], p["away_b"]), 0),
                    _ratio(q["redis_us"], p["redis_us"]),
                    _ratio(q["hub_us"], p["hub_us"]),
                    "",
                ]
            )
    first = mem[0]
    return [
        f"### Redis memory and CPU per session ({first['sessions']:,} agents, "
        f"{first['messages']} messages each, never acknowledged)",
        _table(_MEMORY_COLUMNS, rows),
        "One fresh node and Redis"
        + (f" (`{hub_argv}`)" if hub_argv else "")
        + ". Each measured socket `rsA{i}` has a plain partner `rsB{i}` that sends it M "
        "messages; a session socket reads them and never acknowledges. B/socket: Redis "
        "`used_memory` (`INFO memory`) deltas divided by the sockets: *open* from before "
        "the sockets opened (both sides of each pair: presence, subscriptions, the "
        "session's hash) to once they were announced; *M kept* from then to after every "
        "message arrived; *closed* from before they opened to `--resume-away` seconds "
        "after every socket closed (an away session's hash and stream stay for "
        "`--resume-window`). *Redis "
        "µs/msg*: `used_cpu_sys + used_cpu_user` (`INFO cpu`) over the sends per message; "
        "*hub µs/msg* the node's CPU from `/proc`. The *session - plain* rows are what a "
        "session adds.",
    ]


def _minus(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a - b)


def resume_markdown(out: dict[str, Any]) -> str:
    """The whole report of a ``--resume-only`` run."""
    c = out["config"]
    bullets = [
        f"- Command: `{out['command']}`",
        f"- Machine: {out['machine']}",
        f"- Host: {out['host']}; {out['versions']}",
    ]
    if out.get("code"):
        bullets.append(f"- Code: {out['code']}")
    bullets.append(f"- Elapsed: {out['elapsed_s']:.0f} s")
    blocks = [
        "# bushub-bench: sessions (resume)",
        "\n".join(bullets),
        *resume_sections(out["summary"]["resume"], c),
    ]
    lines = [line for block in blocks for line in (block, "")]
    if out.get("logs"):
        lines.append(f"Child logs kept in `{out['logs']}`.")
    return "\n".join(lines)
