"""Figures and report blocks of workload R in variants side by side (``busbench.sidebyside``).

Pure functions of the runs' results: per variant and phase the per-repetition figures,
their medians and their ratios to the baseline variant measured in the same run (both as
the ratio of the medians and as the median of the per-repetition ratios), and the tables
``busbench.report.resume`` and ``busbench.report.operators`` show them in.
"""

import statistics
from dataclasses import dataclass
from typing import Any

from busbench.report.figures import ERROR_KEYS, _drops, _figures_per_rep, _phase_medians

# The figures compared with the baseline.
RATIO_KEYS = ("server_us", "p50", "p99", "redis_us", "rt_per_s")
KIND_LABEL = {"fixed": "fixed rate", "saturation": "saturation"}

Row = list[str]


@dataclass(frozen=True)
class Variants:
    """The variants of one measurement, the baseline first, and their report labels."""

    names: tuple[str, ...]
    labels: dict[str, str]

    @property
    def base(self) -> str:
        return self.names[0]

    @property
    def others(self) -> tuple[str, ...]:
        return self.names[1:]


@dataclass(frozen=True)
class Figure:
    """One figure of the comparison table: ``key`` of the phases of ``kind``."""

    kind: str
    label: str
    key: str
    digits: int


# ---- formatting ------------------------------------------------------------------


def ratio_val(a: Any, b: Any) -> float | None:
    return None if a is None or b in (None, 0) else float(a / b)


def ratio(a: Any, b: Any) -> str:
    r = ratio_val(a, b)
    return "-" if r is None else f"{r:.2f}x"


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def table(header: list[str], rows: list[Row], align_first: int = 1) -> str:
    align = ["---"] * align_first + ["---:"] * (len(header) - align_first)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *rows])


# ---- figures ---------------------------------------------------------------------


def _per_rep_ratios(
    per: dict[str, dict[str, list[dict[str, Any]]]], variant: str, base: str, phase: str, key: str
) -> list[float]:
    """variant / base, repetition by repetition (each pair of runs side by side)."""
    on, off = per.get(variant, {}).get(phase, []), per.get(base, {}).get(phase, [])
    out = []
    for a, b in zip(on, off, strict=False):
        r = ratio_val(a.get(key), b.get(key))
        if r is not None:
            out.append(r)
    return out


def summary(runs: list[dict[str, Any]], variants: Variants) -> dict[str, Any]:
    """Per variant and phase: per-repetition figures, medians, ratios to the baseline,
    the nodes' drops, and how busy the rest of the machine was."""
    per = _figures_per_rep(runs)
    medians = {
        variant: {name: _phase_medians(reps) for name, reps in phases.items()}
        for variant, phases in per.items()
    }
    phases = list(dict.fromkeys(name for phases in per.values() for name in phases))
    base = variants.base
    ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in variants.others:
        for name in phases:
            for key in RATIO_KEYS:
                reps = _per_rep_ratios(per, variant, base, name, key)
                ratios.setdefault(variant, {}).setdefault(name, {})[key] = {
                    "of_medians": ratio_val(
                        medians.get(variant, {}).get(name, {}).get(key),
                        medians.get(base, {}).get(name, {}).get(key),
                    ),
                    "per_rep": reps,
                    "median_per_rep": statistics.median(reps) if reps else None,
                }
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
        "drops": _drops(runs),
    }


# ---- report blocks ---------------------------------------------------------------


def others_note(s: dict[str, Any]) -> list[str]:
    """A bullet on the other processes' load during the windows, if it was read."""
    if s.get("others_cores") is None:
        return []
    return [
        f"- Other processes took a median of {s['others_cores']:.2f} of the 2 cores "
        "during the measured windows"
        + (
            ": **a noisy run; latency suffers first, CPU per message least.**"
            if s["others_cores"] > 0.5
            else "."
        )
    ]


def comparison_rows(
    s: dict[str, Any],
    combos: list[str],
    figures: tuple[Figure, ...],
    variants: Variants,
    limit: float | None = None,
) -> list[Row]:
    """Per combination, figure and variant: the baseline, the variant, the ratio of the
    medians and the median of the per-repetition ratios; with ``limit``, the target
    (``<= limit`` times the baseline) and its verdict."""
    med, ratios, base = s["medians"], s["ratios"], variants.base
    rows = []
    for combo in combos:
        for fig in figures:
            phase = f"{combo}/{fig.kind}"
            off = med.get(base, {}).get(phase, {}).get(fig.key)
            for variant in variants.others:
                on = med.get(variant, {}).get(phase, {}).get(fig.key)
                r = ratios.get(variant, {}).get(phase, {}).get(fig.key, {})
                per_rep = r.get("median_per_rep")
                row = [
                    f"{fig.label}, {combo}, {KIND_LABEL[fig.kind]}: {variants.labels[variant]}",
                    num(off, fig.digits),
                    num(on, fig.digits),
                    ratio(on, off),
                    "-" if per_rep is None else f"{per_rep:.2f}x",
                ]
                if limit is not None:
                    ok = None if r.get("of_medians") is None else r["of_medians"] <= limit
                    verdict = "-" if ok is None else ("**met**" if ok else "**not met**")
                    row += [f"<= {limit}x {base}", verdict]
                rows.append(row)
    return rows


RATIO_NOTE = (
    "the ratio of the medians; *per-rep*: the median of the ratios of runs side by side "
    "(one repetition each), less exposed to the machine's drift."
)

WORKLOAD_COLUMNS = [
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
    "cores busy",
]

# What the columns above do not say: how busy the whole machine was. Where Redis and
# the load generator share the hubs' cores, what a variant makes them do slows the
# hubs too (a wake-up waits while every core is taken).
BUSY_NOTE = (
    "*cores busy*: the whole machine's busy time over the window (`/proc/stat`: the "
    "hubs, Redis, the load generator and anything else), in cores."
)


def workload_table(s: dict[str, Any], combos: list[str], variants: Variants) -> str:
    """Every phase's medians per variant, each followed by its ratios to the baseline."""
    med, base = s["medians"], variants.base
    rows = []
    for combo in combos:
        for kind in ("fixed", "saturation"):
            phase = f"{combo}/{kind}"
            off = med.get(base, {}).get(phase)
            for variant in variants.names:
                m = med.get(variant, {}).get(phase)
                if not m:
                    continue
                rows.append(_workload_row(phase, variants.labels[variant], m))
                if variant != base and off:
                    rows.append(_workload_ratio(phase, f"*{variant} / {base}*", m, off))
    return table(WORKLOAD_COLUMNS, rows, 2)


def _workload_row(phase: str, label: str, m: dict[str, Any]) -> Row:
    return [
        phase,
        label,
        num(m["request_bytes"]),
        num(m["rt_per_s"], 0),
        num(m["p50"], 2),
        num(m["p99"], 2),
        num(m["server_us"]),
        num(m["redis_us"]),
        num(m["redis_cores"], 2),
        num(m["server_wbytes"], 0),
        num(m["loadgen_us"]),
        num(m["loadgen_util"], 2),
        num(m.get("machine_busy"), 2),
    ]


def _workload_ratio(phase: str, label: str, m: dict[str, Any], off: dict[str, Any]) -> Row:
    return [
        phase,
        label,
        "",
        ratio(m["rt_per_s"], off["rt_per_s"]),
        ratio(m["p50"], off["p50"]),
        ratio(m["p99"], off["p99"]),
        ratio(m["server_us"], off["server_us"]),
        ratio(m["redis_us"], off["redis_us"]),
        ratio(m["redis_cores"], off["redis_cores"]),
        ratio(m["server_wbytes"], off["server_wbytes"]),
        "",
        "",
        ratio(m.get("machine_busy"), off.get("machine_busy")),
    ]


def loss_table(s: dict[str, Any], variants: Variants) -> str:
    """Round trips sent and answered, every error count and the hubs' drops, summed
    over repetitions, per variant."""
    rows = []
    for variant in variants.names:
        phases = s["medians"].get(variant)
        if not phases:
            continue
        sent = sum(m["sent"] for m in phases.values())
        ok = sum(m["ok"] for m in phases.values())
        errors = [sum(m["errors"][k] for m in phases.values()) for k in ERROR_KEYS]
        drops = s["drops"].get(variant) or {}
        rows.append(
            [
                variants.labels[variant],
                num(sent),
                num(ok),
                *(num(n) for n in errors),
                ", ".join(f"{k} {v:.0f}" for k, v in sorted(drops.items())) or "-",
            ]
        )
    return table(["variant", "sent", "ok", *ERROR_KEYS, "hub dropped counters"], rows)


def lossless(s: dict[str, Any], variant: str) -> bool:
    """True when nothing was lost, duplicated or broken in ``variant``'s runs."""
    phases = s["medians"].get(variant) or {}
    errors = sum(m["errors"][k] for m in phases.values() for k in ERROR_KEYS)
    return not errors and not s["drops"].get(variant)


def repetitions(s: dict[str, Any], variants: Variants) -> list[str]:
    """Hub CPU per message and p99 at the fixed rate, repetition by repetition."""
    rows = []
    for variant in variants.names:
        for phase, reps in s["per_rep"].get(variant, {}).items():
            if not phase.endswith("/fixed"):
                continue
            for key, digits in (("server_us", 1), ("p99", 2)):
                rows.append(
                    [
                        variants.labels[variant],
                        f"{phase} {key}",
                        " / ".join(num(r[key], digits) for r in reps),
                    ]
                )
    if not rows:
        return []
    header = ["variant", "figure", "per repetition"]
    return ["### Repetitions (fixed rate)", table(header, rows, 2)]


def page(out: dict[str, Any], title: str, sections: list[str]) -> str:
    """A whole report of one ``--*-only`` run: the title, the run's facts, ``sections``."""
    bullets = [
        f"- Command: `{out['command']}`",
        f"- Machine: {out['machine']}",
        f"- Host: {out['host']}; {out['versions']}",
    ]
    if out.get("code"):
        bullets.append(f"- Code: {out['code']}")
    bullets.append(f"- Elapsed: {out['elapsed_s']:.0f} s")
    blocks = [f"# bushub-bench: {title}", "\n".join(bullets), *sections]
    lines = [line for block in blocks for line in (block, "")]
    if out.get("logs"):
        lines.append(f"Child logs kept in `{out['logs']}`.")
    return "\n".join(lines)
