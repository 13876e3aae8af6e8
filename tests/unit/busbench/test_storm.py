"""The reconnect storm's pure parts: the clients' policy (the reconnecting proxies'),
why a client gave up, and the figures taken from the raw times."""

import random

import pytest
from busbench.report.stormfigures import (
    interval_rates,
    peak_and_mean,
    peak_rate,
    per_bin,
    quantile,
    spread,
    storm_figures,
    storm_window,
)
from busbench.storm import StormPlan, proxy_policy
from busbench.stormclient import give_up_key, policy_of

from busclient.reconnecting import Disconnect, ReconnectPolicy


def test_the_clients_follow_the_proxies_default_policy() -> None:
    assert policy_of({}) == ReconnectPolicy()
    assert policy_of({"policy": proxy_policy()}) == ReconnectPolicy()
    plan = StormPlan(count=10, per_loadgen=10_000, per_addr=20_000, compression="deflate")
    assert plan.deadline == ReconnectPolicy().max_elapsed
    assert plan.idle_plan().shares() == [(0, 10)]


def test_backoff_grows_capped_jittered_and_503_is_retried_until_the_deadline() -> None:
    policy = policy_of({"policy": {**proxy_policy(), "max_delay": 2.0, "jitter": 1.0}})
    rng = random.Random(7)
    refused = Disconnect(status=503)
    waits = [policy.decide(refused, n, 0.0, rng) for n in range(1, 8)]
    assert all(d.retry for d in waits)
    ceilings = [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert all(0 <= d.delay <= c for d, c in zip(waits, ceilings, strict=True))
    # The last wait before the deadline is cut to it; at the deadline the client gives up.
    assert policy.decide(refused, 9, 59.9, rng).delay <= 0.1 + 1e-9
    last = policy.decide(refused, 10, 60.0, rng)
    assert not last.retry
    assert give_up_key(policy, refused) == "deadline; last: HTTP 503"
    assert give_up_key(policy, Disconnect(status=403)).startswith("refused")


def test_quantiles_and_spread_use_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 51.0
    assert quantile(values, 0.99) == 100.0
    assert spread([3.0, 1.0, 2.0]) == {"p50": 2.0, "p90": 3.0, "p99": 3.0, "max": 3.0}
    assert spread([]) is None


def test_peak_rate_is_the_busiest_second_anywhere() -> None:
    times = [0.1, 2.0, 2.2, 2.5, 2.9, 3.05, 3.5, 5.0]
    assert peak_rate(times) == 4.0  # 2.0, 2.2, 2.5, 2.9 (or 2.2 .. 3.05)
    assert peak_rate(times, window=0.5) == 4.0  # two within any half second
    assert peak_rate([1.0]) == 1.0
    assert per_bin(times) == [1, 0, 4, 2, 0, 1]
    assert per_bin([]) == []


def test_interval_rates_leave_out_the_bench_own_commands() -> None:
    samples = [(0.0, 100.0), (0.2, 301.0), (0.4, 302.0), (0.6, 703.0)]
    assert interval_rates(samples, 1.0) == pytest.approx([1000.0, 0.0, 2000.0])
    peak, mean = peak_and_mean(samples, 1.0)
    assert peak == pytest.approx(2000.0)
    assert mean == pytest.approx(600 / 0.6)
    assert peak_and_mean([(0.0, 1.0)]) == (None, None)


def test_the_storm_window_ends_at_the_first_sample_after_everyone_is_back() -> None:
    samples = [{"t": t} for t in (-0.01, 0.2, 0.4, 0.6, 0.8)]
    assert [s["t"] for s in storm_window(samples, 0.5)] == [-0.01, 0.2, 0.4, 0.6]
    assert storm_window(samples, None) == samples


def _sample(t: float, redis_cpu: float, cmds: int, n2: float, n3: float) -> dict:
    return {
        "t": t,
        "redis_cpu_s": redis_cpu,
        "redis_commands": cmds,
        "cpu_s": {"redis": redis_cpu, "survivor1": n2, "survivor2": n3},
        "loadgen_cpu_s": t / 2,
        "machine": {"user": 2 * t, "system": 0.0},
    }


def test_storm_figures_from_raw_times() -> None:
    res = {
        "count": 6,
        "opened": 6,
        "restored_s": 3.0,
        "settle_s": 5.0,
        "sample_s": 1.0,
        "pick": "alternate",
        "policy": proxy_policy(),
        "open_timeout": 10.0,
        "loadgens": 1,
        "source_addresses": ["127.0.0.1"],
        "survivors": ["hub-n2", "hub-n3"],
        "connections_after": {"hub-n2": 3.0, "hub-n3": 2.0},
        "clients": {
            "opened": 6,
            "registry_before": 6,
            "lost": [0.01, 0.01, 0.02, 0.02, 0.03, 0.03],
            "established": [2.1, 2.2, 2.3, 2.4, 3.0, None],
            "survivor": [0, 1, 0, 1, 0, -1],
            "attempts": [1, 1, 1, 2, 3, 20],
            "registry_after": [2.1, 2.3, 2.3, 2.4, None, None],
            "failures": [[0.2, 1, "HTTP 503"], [0.5, 0, "HTTP 503"], [0.6, 0, "TimeoutError"]],
            "gave_up": {"deadline; last: HTTP 503": 1},
            "unfinished": 0,
            "closed_after": {},
            "still_open": 5,
            "open_errors": {},
        },
        "samples": [
            _sample(-0.01, 1.0, 1000, 5.0, 5.0),
            _sample(1.0, 1.1, 2001, 5.5, 5.2),
            _sample(2.0, 1.5, 5002, 6.5, 6.0),
            _sample(3.0, 1.6, 6003, 7.0, 6.5),
            _sample(4.0, 1.6, 6004, 7.0, 6.5),
        ],
    }
    m = storm_figures(res)
    assert m["back"] == 5 and m["gave_up"] == 1 and m["all_back_s"] is None
    assert not m["met"]
    assert m["back_s"] == {"p50": 2.3, "p90": 3.0, "p99": 3.0, "max": 3.0}
    assert m["handshakes_peak_per_s"] == 5.0
    assert m["handshakes_per_s"] == [0, 0, 4, 1]
    assert [s["back"] for s in m["per_survivor"]] == [3, 2]
    assert m["http_503"] == 2 and m["failures"] == {"HTTP 503": 2, "TimeoutError": 1}
    assert m["registry_after"] == 4 and m["attempts"] == 28 and m["attempts_max"] == 20
    assert m["redis_cpu_peak"] == pytest.approx(0.4)
    assert m["redis_cpu_mean"] == pytest.approx(0.6 / 3.01)
    assert m["redis_cmds_peak"] == pytest.approx(3000.0)
    assert m["survivors_cpu"]["hub-n2"]["peak_cores"] == pytest.approx(1.0)
    res["clients"]["established"][5] = 2.5
    res["clients"]["gave_up"] = {}
    m = storm_figures(res)
    assert m["all_back_s"] == 3.0 and m["met"]
