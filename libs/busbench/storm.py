"""A reconnect storm: a node holding N agent sockets is SIGKILLed; its clients come back
through the two survivors.

The orchestrator's side. Three hub nodes share one Redis. ``count`` agent sockets
(pairs watching each other, ``stA{n}?peer=stB{n}`` and the reverse, held by the lean
``busbench.rawws`` client) are opened on node 1 by load generators
(``busbench.stormclient``; the idle measurement's processes, shares and ``127.0.0.x``
source addresses). After they settle,
node 1 gets SIGKILL; each client follows the reconnecting proxies' policy to a survivor
(see ``busbench.stormclient``). From the kill until every generator says its share is
re-established (or given up), every ``sample`` seconds: Redis's CPU and commands (raw
``INFO``), the survivors' and the generators' CPU (``/proc``). After a settle, each
generator counts the sockets still open and those whose peer was announced again.
"""

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbench.idle import (
    Generator,
    IdlePlan,
    RedisInfo,
    _await_event,
    _cpu_s,
    _spawn,
    close_generators,
    pump,
    reap,
    redis_figures,
    said,
)
from busbench.loadgen import machine_times
from busbench.procs import Child, metric_value, worker_pids
from busbench.stormclient import OPEN_TIMEOUT
from busclient.reconnecting import ReconnectPolicy


def proxy_policy() -> dict[str, Any]:
    """The reconnecting proxies' default backoff and deadline (``ReconnectPolicy()``)."""
    p = ReconnectPolicy()
    return {
        "initial_delay": p.initial_delay,
        "max_delay": p.max_delay,
        "multiplier": p.multiplier,
        "jitter": p.jitter,
        "max_elapsed": p.max_elapsed,
    }


@dataclass
class StormPlan:
    """What one storm does; the CLI's ``--storm-*`` flags."""

    count: int
    per_loadgen: int
    per_addr: int
    compression: str
    ping: float = 20.0
    pick: str = "alternate"  # survivor by socket index (alternate) or at random per attempt
    policy: dict[str, Any] = field(default_factory=proxy_policy)
    sample: float = 0.2  # seconds between Redis and CPU samples
    settle: float = 5.0  # seconds after the last client is back, before the final counts
    seed: int = 1

    @property
    def deadline(self) -> float:
        return float(self.policy.get("max_elapsed") or 60.0)

    @property
    def restore_timeout(self) -> float:
        """A generator says ``restored`` by then, whatever is left (counted unfinished)."""
        return self.deadline + OPEN_TIMEOUT + 15.0

    def idle_plan(self) -> IdlePlan:
        return IdlePlan(
            count=self.count,
            ping=self.ping,
            window=0.0,
            hold=0.0,
            per_loadgen=self.per_loadgen,
            per_addr=self.per_addr,
            compression=self.compression,
            tag="s",
        )


def _sample(redis: RedisInfo, pids: dict[str, int], gens: list[Generator]) -> dict[str, Any]:
    info = redis.read("default")
    return {
        "t": time.monotonic(),
        "redis_cpu_s": float(info.get("used_cpu_sys", 0) or 0)
        + float(info.get("used_cpu_user", 0) or 0),
        "redis_commands": int(info.get("total_commands_processed", 0) or 0),
        "cpu_s": {name: _cpu_s(pid) for name, pid in pids.items()},
        "loadgen_cpu_s": sum(_cpu_s(g.proc.pid) for g in gens),
        "machine": machine_times(),
    }


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The generators' results as one: lists joined, counts summed."""
    out: dict[str, Any] = {}
    for r in results:
        for key, value in r.items():
            if isinstance(value, list):
                out.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                d = out.setdefault(key, {})
                for k, v in value.items():
                    if isinstance(v, int | float):
                        d[k] = d.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    return out


def measure(
    plan: StormPlan,
    doomed: Child,
    survivors: list[Child],
    redis: tuple[int, int],
    work: Path,
    log: Any,
) -> dict[str, Any]:
    """Open ``plan.count`` sockets on ``doomed``, SIGKILL it, watch them come back."""
    redis_pid, redis_port = redis
    iplan = plan.idle_plan()
    url = "ws://127.0.0.1:{}".format
    more = {
        "kind": "storm",
        "prefix": "st",
        "survivors": [[url(s.port), s.port] for s in survivors],
        "pick": plan.pick,
        "policy": plan.policy,
        "seed": plan.seed,
        "restore_timeout": plan.restore_timeout,
    }
    gens = [
        _spawn(iplan, url(doomed.port), k, share, work, more)
        for k, share in enumerate(iplan.shares())
    ]
    pids = {"redis": redis_pid, **{f"survivor{k + 1}": s.pid for k, s in enumerate(survivors)}}
    info = RedisInfo(redis_port)
    samples: list[dict[str, Any]] = []
    try:
        _await_event(gens, "warmed", 180)
        for g in gens:
            g.tell("open")
        _await_event(gens, "opened", iplan.open_timeout + 60)
        opened = sum(e["opened"] for g in gens for e in g.events if e["event"] == "opened")
        log(f"  {opened:,}/{plan.count:,} open on {doomed.name}; settle {iplan.settle:.0f} s")
        time.sleep(iplan.settle)
        before = {s.name: metric_value(s.port, "bushub_connections") for s in [doomed, *survivors]}
        info_all0 = info.read("all")
        samples.append(_sample(info, pids, gens))
        # A node of several workers dies whole, as its machine would: its supervisor
        # and every worker at once (killed alone, the supervisor would leave them).
        victims = [doomed.pid, *worker_pids(doomed.pid)]
        t_kill = time.monotonic()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        for g in gens:
            g.tell(f"storm {t_kill!r}")
        log(f"  SIGKILL {doomed.name}; clients reconnect to {', '.join(s.name for s in survivors)}")
        t_end = t_kill + plan.restore_timeout + 30
        t_restored: float | None = None
        next_tick = t_kill + plan.sample
        while True:
            now = time.monotonic()
            if now >= next_tick:
                samples.append(_sample(info, pids, gens))
                next_tick += plan.sample * max(1, int((now - next_tick) / plan.sample) + 1)
                if t_restored is not None and now >= t_restored + plan.settle:
                    break
                continue
            waiting = [g for g in gens if not said(g, "restored")]
            if waiting:
                if now > t_end:
                    raise TimeoutError(f"{len(waiting)} load generator(s) did not say 'restored'")
                pump(waiting, next_tick - now)
                if t_restored is None and all(said(g, "restored") for g in gens):
                    t_restored = time.monotonic()
                    log(
                        f"  every client back or given up {t_restored - t_kill:.1f} s "
                        "after the kill"
                    )
            else:
                time.sleep(max(0.0, next_tick - now))
        doomed.proc.wait(10)
        info_all1 = info.read("all")
        after = {s.name: metric_value(s.port, "bushub_connections") for s in survivors}
        results = close_generators(gens)
    finally:
        info.close()
        reap(gens)
    merged = _merge(results)
    return {
        "count": plan.count,
        "opened": merged.get("opened", 0),
        "t_kill": t_kill,
        "restored_s": (t_restored - t_kill) if t_restored is not None else None,
        "settle_s": plan.settle,
        "sample_s": plan.sample,
        "pick": plan.pick,
        "policy": plan.policy,
        "open_timeout": OPEN_TIMEOUT,
        "ping_interval": plan.ping,
        "loadgens": len(results),
        "source_addresses": iplan.addresses(),
        "nofile": results[0]["nofile"] if results else None,
        "connections_before": before,
        "connections_after": after,
        "survivors": [s.name for s in survivors],
        "open_s": max((r.get("open_s") or 0.0) for r in results),
        "clients": {
            k: v for k, v in merged.items() if k not in ("count", "nofile", "open_s", "t_kill")
        },
        "samples": [{**s, "t": s["t"] - t_kill} for s in samples],
        "redis_window": redis_figures(info_all0, info_all1, ours=info.calls - 1),
        "survivors_alive": [s.alive for s in survivors],
    }
