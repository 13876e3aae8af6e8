"""The operators measurement's figures and report (``bushub-bench --operators``).

Pure functions of ``busbench.operators.run``'s result: the workload's three variants
(medians over repetitions, ratios to nobody watching in the same run) and the checks
that each variant watched what it should: the console's answers listed every node, the
tap on an agent outside the workload received no message, the cluster forgot each
watcher before the next variant.
"""

import statistics
from typing import Any

from busbench.report.sidebyside import (
    BUSY_NOTE,
    RATIO_NOTE,
    Figure,
    Row,
    Variants,
    comparison_rows,
    loss_table,
    lossless,
    num,
    others_note,
    page,
    repetitions,
    summary,
    table,
    workload_table,
)

TITLE = "operators watching (console, tap)"
VARIANTS = ("none", "console", "tap")
LABEL = {
    "none": "nobody watching",
    "console": "console polling",
    "tap": "tap on another agent",
}
_VARIANTS = Variants(VARIANTS, LABEL)
_FIGURES = (
    Figure("fixed", "hub CPU µs/msg", "server_us", 1),
    Figure("fixed", "p50 ms", "p50", 2),
    Figure("fixed", "p99 ms", "p99", 2),
    Figure("fixed", "Redis µs/msg", "redis_us", 1),
    Figure("saturation", "rt/s", "rt_per_s", 0),
    Figure("saturation", "hub CPU µs/msg", "server_us", 1),
    Figure("saturation", "p50 ms", "p50", 2),
    Figure("saturation", "p99 ms", "p99", 2),
    Figure("saturation", "Redis µs/msg", "redis_us", 1),
)


# ---- figures ---------------------------------------------------------------------


def _add(total: dict[str, Any], seen: dict[str, Any]) -> None:
    """Sum a watcher's counts into ``total`` (numbers, and dicts of numbers; its HTTP
    status and whether its stream ended are kept apart)."""
    for key, value in seen.items():
        if key in ("status", "ended") or not isinstance(value, int | float | dict):
            continue
        if isinstance(value, dict):
            counts = total.setdefault(key, {})
            for k, v in value.items():
                counts[k] = counts.get(k, 0) + v
        else:
            total[key] = total.get(key, 0) + value


def watch_figures(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per watched variant: the watchers' counts summed over repetitions, how long the
    cluster took to forget them, and the cores the watcher process took."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        if "watch" not in run:
            continue
        w = out.setdefault(
            run["server"],
            {"runs": 0, "settle_s": [], "unsettled": 0, "watcher_cores": [], "statuses": []},
        )
        seen = run["watch"] or {}
        w["runs"] += 1
        _add(w, seen)
        w["ended"] = w.get("ended", 0) + int(bool(seen.get("ended")))
        w["statuses"].append(seen.get("status"))
        w["settle_s"].append(run.get("settle_s"))
        w["unsettled"] += int(not run.get("settled", False))
        for phase in run.get("phases") or []:
            cpu = (phase.get("cpu_s") or {}).get("watcher")
            if cpu is not None and phase.get("window_s"):
                w["watcher_cores"].append(cpu / phase["window_s"])
    for w in out.values():
        cores, settle = w.pop("watcher_cores"), [v for v in w["settle_s"] if v is not None]
        w["watcher_cores"] = statistics.median(cores) if cores else None
        w["settle_median_s"] = statistics.median(settle) if settle else None
    return out


def operators_summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per variant and phase: per-repetition figures, medians, ratios to nobody
    watching; the watchers' checks."""
    runs = res.get("runs") or []
    return {
        **summary(runs, _VARIANTS),
        "watch": watch_figures(runs),
        "hub_argv": res.get("hub_argv"),
        "tap_agent": res.get("tap_agent"),
        "poll_every": res.get("poll_every"),
    }


def checks(s: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(what, what was seen, passed) for each check of the watched variants."""
    out: list[tuple[str, str, bool]] = []
    con = s["watch"].get("console")
    if con:
        ok, all_nodes = con.get("ok", 0), con.get("all_nodes", 0)
        failed = sum((con.get("failed") or {}).values())
        out.append(
            (
                "console: node 1's `/api/cluster` answers listing both nodes",
                f"{all_nodes:,} of {ok:,} answers ({con.get('polls', 0):,} polls, "
                f"{failed:,} failed, {con.get('missing_after_all', 0):,} missing a node "
                "after one had listed both)",
                all_nodes > 0 and not failed and not con.get("missing_after_all"),
            )
        )
    tap = s["watch"].get("tap")
    if tap:
        events = tap.get("events") or {}
        opened, messages = events.get("open", 0), events.get("message", 0)
        others = {k: v for k, v in events.items() if k not in ("open", "message")}
        out.append(
            (
                f"tap on `{s.get('tap_agent')}` (not in the workload): message events",
                f"{messages:,} (opened {opened:,} of {tap['runs']:,} time(s)"
                + "".join(f", {k} {v:,}" for k, v in sorted(others.items()))
                + (f", ended early {tap['ended']:,}" if tap.get("ended") else "")
                + ")",
                messages == 0 and opened == tap["runs"] and not others and not tap.get("ended"),
            )
        )
    for variant in ("console", "tap"):
        w = s["watch"].get(variant)
        if w:
            settle = [v for v in w["settle_s"] if v is not None]
            out.append(
                (
                    f"{variant}: the cluster forgot it before the next variant",
                    f"after {', '.join(f'{v:.1f}' for v in settle)} s"
                    + (f"; {w['unsettled']} not within the limit" if w["unsettled"] else ""),
                    not w["unsettled"],
                )
            )
    for variant in VARIANTS:
        if s["medians"].get(variant):
            what = f"{LABEL[variant]}: nothing lost, duplicated or dropped"
            out.append((what, "the loss table below", lossless(s, variant)))
    return out


# ---- the report ------------------------------------------------------------------


def operators_sections(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    """Every block of the operators report, in order."""
    combos = c.get("operators_combos") or []
    rows = comparison_rows(s, combos, _FIGURES, _VARIANTS)
    header = ["figure", "none", "watched", "watched / none", "median of per-rep ratios"]
    return [
        *_intro(s, c),
        "### Checks",
        table(["check", "seen", "verdict"], [_check_row(*ch) for ch in checks(s)], 2),
        "### Watched against nobody watching, same run",
        table(header, rows),
        f"*watched / none*: {RATIO_NOTE}",
        "### Workload R with and without operators watching",
        workload_table(s, combos, _VARIANTS),
        "CPU per relayed message from `/proc/<pid>/stat` over the window: *hub*, both "
        "nodes (node 1 also answers the console's polls and serves the tap); *Redis*, "
        "the redis-server process." + _watcher_note(s),
        BUSY_NOTE,
        "### Loss and duplication (sums over repetitions; must all be 0)",
        loss_table(s, _VARIANTS),
        *repetitions(s, _VARIANTS),
    ]


def _check_row(what: str, seen: str, passed: bool) -> Row:
    return [what, seen, "**ok**" if passed else "**failed**"]


def _watcher_note(s: dict[str, Any]) -> str:
    parts = [
        f"{variant} {_cores(w['watcher_cores'])}"
        for variant, w in s["watch"].items()
        if w.get("watcher_cores") is not None
    ]
    if not parts:
        return ""
    return (
        " The watcher process (not counted as hub) took a median of "
        + ", ".join(parts)
        + " of a core."
    )


def _cores(value: float) -> str:
    # /proc counts CPU in 10 ms ticks: less than one a second reads as 0.
    return "< 0.01" if value < 0.01 else num(value, 2)


def _intro(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    every = s.get("poll_every") or 1.0
    bullets = [
        f"- Workload R, K = {c['pairs']} pairs, on two hub nodes with `--admin-token`, in "
        f"three variants alternating {c['reps']} time(s) (medians over repetitions): "
        "*nobody watching*; *console polling* (node 1's `GET /api/cluster` with the "
        f"token every {every:g} s through the whole job, as the console page does: every "
        "node publishes its report once a second meanwhile); *tap on another agent* "
        f"(`GET /api/tap/{s.get('tap_agent')}` open on node 1 through the whole job, read "
        "and thrown away: every node checks each message it relays against the tapped "
        "name).",
        f"- Fixed rate {c['rate']:,.0f} rt/s ({c['fixed_seconds']:g} s), saturation "
        f"{c['inflight']} in flight per pair ({c['sat_seconds']:g} s), after "
        f"{c['warmup']:g} s warm-up each; one Redis of its own. After a watched variant "
        "the next waits until no operator notice was published for longer than a notice "
        "holds and no node reported for two seconds.",
    ]
    if s.get("hub_argv"):
        bullets.append(f"- Hub nodes: `{s['hub_argv']}`")
    bullets += others_note(s)
    return ["## Operators watching (console, tap)", "\n".join(bullets)]


def operators_markdown(out: dict[str, Any]) -> str:
    """The whole report of an ``--operators-only`` run."""
    return page(out, TITLE, operators_sections(out["summary"]["operators"], out["config"]))
