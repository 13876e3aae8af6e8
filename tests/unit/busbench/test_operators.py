"""The operators measurement's pure parts: job shapes, names, the figures and checks of
its report, and the tap watcher's reading of a real event stream."""

import argparse
import http.server
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from busbench import operators, report
from busbench.cli import render
from busbench.report.operators import checks, operators_markdown, operators_summary

from tests.unit.busbench.bench_outputs import (
    HUB,
    REP_SPREAD,
    config,
    full_run,
    header,
    phase,
)

COMBOS = ["task-json", "audio-msgpack"]
# Watched variants against nobody watching: (hub CPU, p99) multipliers.
COST = {"none": (1.0, 1.0), "console": (1.1, 1.2), "tap": (1.02, 1.0)}


def operators_runs(reps: int = 3, tap_messages: int = 0) -> list[dict[str, Any]]:
    """Workload R's phases in the three variants, as ``operators.run`` keeps them."""
    runs = []
    for rep in range(reps):
        for variant, (cpu, p99) in COST.items():
            phases = []
            for name in ("task-json/fixed", "task-json/saturation", "audio-msgpack/fixed"):
                rt, us, redis_us, lg, (p50, p99_ms, p999), lag, size, writes = HUB[name]
                figs = (rt, us * cpu, redis_us, lg, (p50, p99_ms * p99, p999), lag, size, writes)
                ph = phase(name, figs, spread=REP_SPREAD[rep])
                if variant != "none":
                    ph["cpu_s"]["watcher"] = 0.05 * ph["window_s"]
                phases.append(ph)
            run: dict[str, Any] = {"phases": phases, "server": variant, "rep": rep, "drops": {}}
            if variant == "console":
                polls = 30
                run["watch"] = {
                    "polls": polls,
                    "ok": polls,
                    "all_nodes": polls - 1,
                    "missing_after_all": 0,
                    "bytes": 24_000 * polls,
                    "failed": {},
                }
            if variant == "tap":
                events = {"open": 1, **({"message": tap_messages} if tap_messages else {})}
                run["watch"] = {
                    "status": 200,
                    "events": events,
                    "comments": 2,
                    "bytes": 68,
                    "ended": False,
                }
            if variant != "none":
                run.update(settle_s=15.5 if variant == "console" else 6.6, settled=True)
            runs.append(run)
    return runs


def operators_result(**kw: Any) -> dict[str, Any]:
    return {
        "hub_argv": "python -m bushub serve --node-id op1 --admin-token '<admin token>'",
        "tap_agent": operators.TAP_AGENT,
        "poll_every": 1.0,
        "runs": operators_runs(**kw),
    }


def operators_only_run() -> dict[str, Any]:
    out = header(
        command="bushub-bench --operators-only --reps 3",
        config=config(
            idle_only=False,
            operators=True,
            operators_only=True,
            resume_only=False,
            operators_combos=COMBOS,
        ),
        elapsed_s=280.0,
    )
    del out["hub_argv"]
    out["operators"] = operators_result()
    return out


def test_each_variant_and_repetition_gets_fresh_names() -> None:
    seen: set[str] = set()
    for variant in operators.VARIANTS:
        for rep in range(3):
            a, b = operators.names(variant, rep, "msgpack", 2)
            assert not seen & {*a, *b}
            seen |= {*a, *b}
    assert operators.TAP_AGENT not in seen
    assert operators.names("console", 1, "json", 1) == (["a000oc1j"], ["b000oc1j"])


def test_job_runs_plain_pairs_fixed_then_saturation() -> None:
    class Jobs:
        def pair_set(self, name: str, fmt: str, a: list[str], b: list[str], *urls: str) -> Any:
            return {"name": name, "a_names": a, "url_a": urls[0]}

    args = argparse.Namespace(
        operators_combos=COMBOS,
        pairs=2,
        warmup=0.5,
        rate=2000.0,
        fixed_seconds=3.0,
        inflight=4,
        sat_seconds=2.0,
        compression="deflate",
    )
    job = operators.job(Jobs(), args, "tap", 0, ("ws://n1", "ws://n2"), {"node1": 1})
    assert [s["name"] for s in job["sets"]] == ["json", "msgpack"]
    assert job["sets"][1]["a_names"] == ["a000ot0m", "a001ot0m"]
    assert [p["name"] for p in job["phases"]] == [
        "task-json/fixed",
        "task-json/saturation",
        "audio-msgpack/fixed",
        "audio-msgpack/saturation",
    ]
    assert job["server"] == "tap" and not job.get("sessions")


def test_ratios_to_nobody_watching_side_by_side() -> None:
    s = operators_summary(operators_result())
    cpu = s["ratios"]["console"]["task-json/fixed"]["server_us"]
    assert cpu["per_rep"] == pytest.approx([1.1, 1.1, 1.1])
    assert cpu["of_medians"] == pytest.approx(1.1)
    p99 = s["ratios"]["tap"]["task-json/fixed"]["p99"]
    assert p99["median_per_rep"] == pytest.approx(1.0)
    assert set(s["ratios"]) == {"console", "tap"}


def test_watchers_counts_summed_and_checked() -> None:
    s = operators_summary(operators_result())
    con, tap = s["watch"]["console"], s["watch"]["tap"]
    assert (con["runs"], con["polls"], con["all_nodes"]) == (3, 90, 87)
    assert tap["events"] == {"open": 3} and tap["statuses"] == [200, 200, 200]
    assert "status" not in tap  # a status is not a count
    assert tap["settle_median_s"] == pytest.approx(6.6)
    assert con["watcher_cores"] == pytest.approx(0.05)
    assert all(passed for _, _, passed in checks(s))


def test_a_tap_that_saw_messages_fails_its_check() -> None:
    s = operators_summary(operators_result(tap_messages=4))
    failed = [what for what, _, passed in checks(s) if not passed]
    assert failed == ["tap on `bench-not-in-workload` (not in the workload): message events"]


def test_operators_only_report() -> None:
    out = operators_only_run()
    out["summary"] = report.summarise(out)
    out["summary"]["operators"] = operators_summary(out["operators"])
    text = operators_markdown(out)
    assert render(out) == text
    assert text.startswith("# bushub-bench: operators watching (console, tap)")
    assert "| hub CPU µs/msg, task-json, fixed rate: console polling | 124.5 | 137.0 | 1.10x |" in (
        text
    )
    assert "| 87 of 90 answers (90 polls, 0 failed," in text.replace("node 1's", "")
    assert "**failed**" not in text
    assert "| tap on another agent | 156,055 | 156,055 | 0 |" in text


def test_a_full_run_with_operators_appends_the_section() -> None:
    out = full_run()
    out["config"].update(operators_combos=COMBOS, operators=True)
    out["operators"] = operators_result()
    out["logs"] = "/tmp/bench-logs"
    out["summary"] = report.summarise(out)
    out["summary"]["operators"] = operators_summary(out["operators"])
    text = render(out)
    assert text.startswith("# bushub-bench: workload R")
    assert text.count("## Operators watching (console, tap)") == 1
    assert text.index("## Profile") < text.index("## Operators watching")
    assert text.endswith("\n\nChild logs kept in `/tmp/bench-logs`.")
    assert text.count("Child logs kept") == 1


# ---- the tap watcher against a real HTTP server --------------------------------------


class _Tap(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.seen_auth = self.headers.get("authorization")  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"kind": "open", "agent": "x", "node": "op1"}\n\n')
        self.wfile.write(b": keepalive\n\n")
        self.wfile.write(b'data: {"kind": "message", "body": {}}\n\n')
        self.wfile.write(b'data: {"kind": "dropped", "count": 3}\n\n')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tap_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Tap)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


def test_tap_watcher_counts_events_by_kind(
    tap_server: http.server.HTTPServer, tmp_path: Path
) -> None:
    out = tmp_path / "seen.json"
    port = tap_server.server_address[1]
    handler = signal.getsignal(signal.SIGTERM)
    try:
        operators.main(["tap", "--port", str(port), "--token", "t0k", "--out", str(out)])
    finally:
        signal.signal(signal.SIGTERM, handler)
    seen = json.loads(out.read_text())
    assert seen["status"] == 200 and seen["ended"] is True
    assert seen["events"] == {"open": 1, "message": 1, "dropped": 1}
    assert seen["comments"] == 1
    assert tap_server.seen_auth == "Bearer t0k"  # type: ignore[attr-defined]
