"""Figures of a reconnect storm from its raw result: times from the kill, rates, peaks.

Pure functions of ``busbench.storm.measure``'s result. Times are seconds from the
SIGKILL (the clients' ``time.monotonic()`` less the orchestrator's at the kill).
"""

import itertools
from typing import Any

TARGET_S = 10.0  # the scale issue's "re-established within 10 s of the kill"
TARGET_COUNT = 20_000


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, as the relay figures' percentiles: the value at ``int(q * n)``."""
    n = len(sorted_values)
    return sorted_values[min(n - 1, int(q * n))]


def spread(values: list[float]) -> dict[str, float] | None:
    """p50/p90/p99/max of ``values``; None when there are none."""
    if not values:
        return None
    v = sorted(values)
    return {
        "p50": quantile(v, 0.50),
        "p90": quantile(v, 0.90),
        "p99": quantile(v, 0.99),
        "max": v[-1],
    }


def peak_rate(times: list[float], window: float = 1.0) -> float:
    """The most events in any ``window``-second span ``[t, t + window)``, per second."""
    v = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(v):
        while v[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best / window


def per_bin(times: list[float], width: float = 1.0) -> list[int]:
    """Events per ``width``-second bin from 0 (the kill); times before 0 go in bin 0."""
    if not times:
        return []
    out = [0] * (int(max(times) / width) + 1)
    for t in times:
        out[max(0, int(t / width))] += 1
    return out


def interval_rates(
    samples: list[tuple[float, float]], ours_per_interval: float = 0.0
) -> list[float]:
    """Per-second rates between consecutive (time, counter) samples, ``ours`` left out."""
    out = []
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if t1 > t0:
            out.append(max(0.0, v1 - v0 - ours_per_interval) / (t1 - t0))
    return out


def peak_and_mean(
    samples: list[tuple[float, float]], ours_per_interval: float = 0.0
) -> tuple[float | None, float | None]:
    """The highest interval rate, and the rate over all the samples' span."""
    rates = interval_rates(samples, ours_per_interval)
    if not rates:
        return None, None
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    ours = ours_per_interval * (len(samples) - 1)
    return max(rates), max(0.0, v1 - v0 - ours) / (t1 - t0)


def storm_window(samples: list[dict[str, Any]], restored_s: float | None) -> list[dict[str, Any]]:
    """The samples from the kill (the last one before it) to the first one after every
    client was back (all of them when that never came)."""
    if restored_s is None:
        return samples
    out = []
    for s in samples:
        out.append(s)
        if s["t"] >= restored_s:
            break
    return out


def _counter(samples: list[dict[str, Any]], get: Any) -> list[tuple[float, float]]:
    return [(s["t"], float(get(s))) for s in samples]


def _cpu_figures(window: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    redis_peak, redis_mean = peak_and_mean(_counter(window, lambda s: s["redis_cpu_s"]))
    cmds_peak, cmds_mean = peak_and_mean(_counter(window, lambda s: s["redis_commands"]), 1.0)
    survivors = {}
    for k, name in enumerate(names):
        key = f"survivor{k + 1}"
        peak, mean = peak_and_mean(_counter(window, lambda s, key=key: s["cpu_s"].get(key, 0)))
        survivors[name] = {"peak_cores": peak, "mean_cores": mean}
    _, loadgen = peak_and_mean(_counter(window, lambda s: s["loadgen_cpu_s"]))
    busy = _counter(
        window,
        lambda s: sum(
            s["machine"].get(k, 0.0) for k in ("user", "nice", "system", "irq", "softirq")
        ),
    )
    _, machine = peak_and_mean(busy) if all(s.get("machine") for s in window) else (None, None)
    return {
        "redis_cpu_peak": redis_peak,
        "redis_cpu_mean": redis_mean,
        "redis_cmds_peak": cmds_peak,
        "redis_cmds_mean": cmds_mean,
        "survivors_cpu": survivors,
        "loadgen_cores": loadgen,
        "machine_cores": machine,
    }


def storm_figures(res: dict[str, Any]) -> dict[str, Any]:
    """What the report shows of one storm."""
    c = res["clients"]
    opened = res["opened"]
    est: list[float | None] = c.get("established") or []
    back = [t for t in est if t is not None]
    gave_up = sum((c.get("gave_up") or {}).values())
    unfinished = c.get("unfinished", 0)
    all_back = bool(opened) and len(back) == opened
    names = res.get("survivors") or []
    survivor_of = c.get("survivor") or []
    per_survivor = []
    for k, name in enumerate(names):
        times = [t for t, s in zip(est, survivor_of, strict=False) if t is not None and s == k]
        per_survivor.append(
            {
                "name": name,
                "back": len(times),
                "peak_per_s": peak_rate(times) if times else None,
                "mean_per_s": len(times) / max(times) if times and max(times) > 0 else None,
                "connections_after": (res.get("connections_after") or {}).get(name),
            }
        )
    failures: dict[str, int] = {}
    for _, _, key in c.get("failures") or []:
        failures[key] = failures.get(key, 0) + 1
    registry = [t for t in c.get("registry_after") or [] if t is not None]
    attempts = c.get("attempts") or []
    window = storm_window(res.get("samples") or [], res.get("restored_s"))
    all_s = max(back) if all_back else None
    return {
        "count": res["count"],
        "opened": opened,
        "open_errors": c.get("open_errors") or {},
        "registry_before": c.get("registry_before"),
        "back": len(back),
        "gave_up": gave_up,
        "gave_up_by": c.get("gave_up") or {},
        "unfinished": unfinished,
        "all_back_s": all_s,
        "back_s": spread(back),
        "lost_s": spread([t for t in c.get("lost") or [] if t is not None]),
        "handshakes_peak_per_s": peak_rate(back) if back else None,
        "handshakes_mean_per_s": len(back) / max(back) if back and max(back) > 0 else None,
        "handshakes_per_s": per_bin(back),
        "per_survivor": per_survivor,
        "attempts": sum(attempts),
        "attempts_max": max(attempts, default=0),
        "http_503": failures.get("HTTP 503", 0),
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
        "registry_after": len(registry),
        "registry_after_s": spread(registry),
        "still_open": c.get("still_open"),
        "closed_after": c.get("closed_after") or {},
        "restored_s": res.get("restored_s"),
        **_cpu_figures(window, names),
        "policy": res.get("policy") or {},
        "pick": res.get("pick"),
        "open_timeout": res.get("open_timeout"),
        "loadgens": res.get("loadgens"),
        "doomed_workers": res.get("doomed_workers") or 1,
        "source_addresses": len(res.get("source_addresses") or []) or None,
        "settle_s": res.get("settle_s"),
        "sample_s": res.get("sample_s"),
        "met": all_s is not None and all_s <= TARGET_S and gave_up == 0 and not unfinished,
    }
