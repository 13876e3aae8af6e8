"""The resume measurement's figures and report (``bushub-bench --resume``).

Pure functions of ``busbench.resume.run``'s result: the workload's three variants
(medians over repetitions, ratios to sessions off in the same run, the issue's
1.25x targets), the control (session sockets against sessions off on a machine as
busy) and Redis memory and CPU per session.
"""

from typing import Any

from busbench.report.sidebyside import (
    BUSY_NOTE,
    RATIO_NOTE,
    Figure,
    Variants,
    comparison_rows,
    loss_table,
    num,
    others_note,
    page,
    ratio,
    repetitions,
    summary,
    table,
    workload_table,
)

VARIANTS = ("off", "on-plain", "on-session", "off-busy")
LABEL = {
    "off": "sessions off",
    "on-plain": "on, plain sockets",
    "on-session": "on, session sockets",
    "off-busy": "sessions off, machine as busy",
}
_VARIANTS = Variants(VARIANTS, LABEL)
# What the targets hold to sessions off (not the control).
_TARGETS = Variants(VARIANTS[:3], LABEL)
# Session sockets against the control: sessions off beside a burner.
_CONTROL = Variants(("off-busy", "on-session"), LABEL)
LIMIT = 1.25  # the "within 1.25x of resume off in the same run"
# held to LIMIT, per combination at the fixed rate
_TARGET_FIGURES = (
    Figure("fixed", "hub CPU µs/msg", "server_us", 1),
    Figure("fixed", "p99 ms", "p99", 2),
)


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


def resume_summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per variant and phase: per-repetition figures, medians and ratios to off."""
    runs = res.get("runs") or []
    sessions: dict[str, dict[str, Any]] = {}
    for run in runs:
        for key, value in (run.get("session") or {}).items():
            s = sessions.setdefault(run["server"], {})
            if isinstance(value, dict):
                for k, v in value.items():
                    s.setdefault(key, {})[k] = s.get(key, {}).get(k, 0) + v
            else:
                s[key] = s.get(key, 0) + value
    memory = res.get("memory") or {}
    control = summary(runs, _CONTROL)
    return {
        **summary(runs, _VARIANTS),
        "control": {"medians": control["medians"], "ratios": control["ratios"]},
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
        *_control(s, c),
        *_workload(s, c),
        *_loss(s),
        *repetitions(s, _VARIANTS),
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
    if s["medians"].get("off-busy"):
        bullets.append(
            "- Control, after each repetition's session sockets: *sessions off, machine "
            "as busy*, the fixed rate only, on the sessions-off nodes beside a burner."
        )
    if argv:
        bullets += [f"- Hub nodes, {side}: `{cmd}`" for side, cmd in argv.items()]
    bullets += others_note(s)
    return ["## Sessions (resume)", "\n".join(bullets)]


def _targets(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    combos = c.get("resume_combos") or []
    rows = comparison_rows(s, combos, _TARGET_FIGURES, _TARGETS, LIMIT)
    header = ["figure", "off", "on", "on / off", "median of per-rep ratios", "target", "verdict"]
    return [
        "### Targets: sessions on against off, same run",
        table(header, rows),
        f"*on / off*: {RATIO_NOTE}",
    ]


def _control(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    control = s.get("control") or {}
    if not control.get("medians", {}).get("off-busy"):
        return []
    fixed = tuple(f for f in _TARGET_FIGURES if f.kind == "fixed")
    rows = comparison_rows(control, c.get("resume_combos") or [], fixed, _CONTROL)
    header = ["figure", "off, as busy", "on", "on / off as busy", "median of per-rep ratios"]
    return [
        "### Control: sessions off on a machine as busy",
        table(header, rows),
        "*off, as busy*: sessions off at the fixed rate beside a burner "
        "(`busbench.burner`, 0.2 ms bursts) keeping as many more cores busy as session "
        "sockets did over sessions off in the same repetition. Where Redis and the load "
        "generator share the hubs' cores, any added work delays every process's "
        "wake-ups; *on / off as busy* is what is left of the ratio once the machine is as "
        "busy: the session path's own cost.",
    ]


def _workload(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    return [
        "### Workload R with sessions off and on",
        workload_table(s, c.get("resume_combos") or [], _VARIANTS),
        "*frame B*: the request as the client's serializer makes it (a session socket "
        "adds 9 bytes of framing). CPU per relayed message from `/proc/<pid>/stat` over "
        "the window: *hub*, both nodes; *Redis*, the redis-server process.",
        BUSY_NOTE,
    ]


def _loss(s: dict[str, Any]) -> list[str]:
    blocks = [
        "### Loss and duplication (sums over repetitions; must all be 0)",
        loss_table(s, _VARIANTS),
    ]
    sess = s["sessions"].get("on-session")
    if sess:
        taken = sess.get("taken") or 0
        blocks.append(
            f"Session sockets: {sess.get('sockets', 0):,} opened (resume results "
            + ", ".join(f"{k}: {v:,}" for k, v in sorted((sess.get("resume") or {}).items()))
            + f"); {sess.get('sent', 0):,} messages sent, {taken:,} taken; "
            f"{sess.get('acks_sent', 0):,} acknowledgements sent "
            f"({num(taken / sess['acks_sent'] if sess.get('acks_sent') else None)} messages "
            f"each), {sess.get('acks_received', 0):,} received from the hub; "
            f"{sess.get('duplicates', 0):,} positions received twice, "
            f"{sess.get('malformed', 0):,} malformed frames."
        )
    return blocks


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
                num(m["message_bytes"]),
                num(m["open_b"], 0),
                num(m["kept_b"], 0),
                num(m["kept_b_per_msg"], 0),
                num(m["away_b"], 0),
                num(m["redis_us"], 2),
                num(m["hub_us"], 1),
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
                    num(_minus(q["open_b"], p["open_b"]), 0),
                    num(_minus(q["kept_b"], p["kept_b"]), 0),
                    num(_minus(q["kept_b_per_msg"], p["kept_b_per_msg"]), 0),
                    num(_minus(q["away_b"], p["away_b"]), 0),
                    ratio(q["redis_us"], p["redis_us"]),
                    ratio(q["hub_us"], p["hub_us"]),
                    "",
                ]
            )
    first = mem[0]
    return [
        f"### Redis memory and CPU per session ({first['sessions']:,} agents, "
        f"{first['messages']} messages each, never acknowledged)",
        table(_MEMORY_COLUMNS, rows),
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
    return page(out, "sessions (resume)", resume_sections(out["summary"]["resume"], out["config"]))
