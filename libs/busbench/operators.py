"""``bushub-bench --operators``: what operators watching costs the relay, side by side.

Workload R (K pairs, ``a_i`` on node 1, ``b_i`` on node 2, ``b_i`` echoes to ``a_i``)
on two hub nodes started with ``--admin-token``, on a Redis of their own, in three
variants alternating ``--reps`` times (docs/protocol.md, Operator API):

- ``none``: nobody watching (the operator views idle: one empty dict's truth test per
  message);
- ``console``: a console polling node 1's ``GET /api/cluster`` every second, with the
  token, through the whole job: every node reports itself once a second meanwhile;
- ``tap``: ``GET /api/tap/{agent}`` open on node 1 on an agent that is not in the
  workload, read continuously: every node checks each message it relays against the
  tapped names, and publishes nothing.

The watcher is a child process (this module, ``console`` or ``tap``) that keeps what it
saw in a JSON file: started before the job, ready once node 1's answer lists both
nodes (console) or the tap's ``open`` event came (tap), stopped after it. Then the
cluster is left to forget it (no notice on the ops channel for longer than a notice
holds, no report for two report periods) so that the next variant starts unwatched.
The figures and the report are ``busbench.report.operators``'s.
"""

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import redis

from busbench import sidebyside
from busbench.procs import Child, Procs, wait_until
from busbench.sidebyside import Log, NodePair
from bushub.nodereports import REPORT_EVERY
from bushub.opsnotices import NOTICE_LIFETIME
from buswire.channels import console_channel, ops_channel

VARIANTS = ("none", "console", "tap")
TAP_AGENT = "bench-not-in-workload"
NODES = ("op1", "op2")
POLL_EVERY = 1.0  # what the console page does
# How long the cluster may take to forget a watcher before the run says so.
SETTLE_LIMIT = 60.0
_READY_WITHIN = 15.0

RunLoadgen = Callable[[dict[str, Any], Path, str], dict[str, Any]]


def names(variant: str, rep: int, fmt: str, k: int) -> tuple[list[str], list[str]]:
    """Fresh agent names per variant and repetition (none of them ``TAP_AGENT``)."""
    return sidebyside.names(f"o{variant[0]}{rep}{fmt[0]}", k)


def job(
    jobs: Any,
    args: argparse.Namespace,
    variant: str,
    rep: int,
    urls: tuple[str, str],
    pids: dict[str, int],
) -> dict[str, Any]:
    """One load-generator job: K pairs per format used, the operators phases."""
    return sidebyside.job(
        jobs,
        args,
        args.operators_combos,
        variant,
        lambda fmt: names(variant, rep, fmt, args.pairs),
        urls,
        pids,
    )


def run(
    args: argparse.Namespace,
    jobs: Any,
    procs: Procs,
    extra: list[str],
    work: Path,
    log: Log,
    run_loadgen: RunLoadgen,
) -> dict[str, Any]:
    """The three variants, alternating, on two fresh nodes and a fresh Redis."""
    token = secrets.token_urlsafe(18)
    redis_child = procs.redis()
    flags = ["--admin-token", token, *extra]
    n1, n2 = sidebyside.start_ready(procs, redis_child, [(node, flags) for node in NODES])
    pair = NodePair(n1, n2, redis_child)
    out: dict[str, Any] = {
        "hub_argv": shlex.join(n1.argv).replace(token, "<admin token>"),
        "tap_agent": TAP_AGENT,
        "poll_every": POLL_EVERY,
        "runs": [],
    }

    def measure(variant: str, rep: int) -> dict[str, Any]:
        watcher = None
        if variant != "none":
            watcher = _start_watcher(procs, variant, rep, pair, token, work)
        result = sidebyside.measured(
            pair,
            lambda pids: run_loadgen(
                job(jobs, args, variant, rep, pair.urls, pids), work, f"operators-{variant}-{rep}"
            ),
            None if watcher is None else {"watcher": watcher.pid},
        )
        if watcher is not None:
            procs.stop(watcher)
            result["watch"] = _seen(_seen_path(work, variant, rep))
            result["settle_s"], result["settled"] = settle(redis_child.port)
            log(f"operators: the cluster forgot the {variant} after {result['settle_s']:.1f} s")
        return result

    out["runs"] = sidebyside.alternate(VARIANTS, args.reps, measure, log, "operators")
    sidebyside.stop_checked(procs, (n1, n2, redis_child), "operators runs")
    return out


def _seen_path(work: Path, variant: str, rep: int) -> Path:
    return work / f"watch-{variant}-{rep}.json"


def _seen(path: Path) -> dict[str, Any]:
    try:
        seen: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return seen


def _start_watcher(
    procs: Procs, variant: str, rep: int, pair: NodePair, token: str, work: Path
) -> Child:
    """The console poller or the tap reader on node 1, once it is watching."""
    path = _seen_path(work, variant, rep)
    port = str(pair.node1.port)
    argv = [sys.executable, "-m", "busbench.operators", variant, "--port", port]
    argv += ["--token", token, "--out", str(path)]
    if variant == "console":
        argv += ["--nodes", ",".join(NODES), "--every", str(POLL_EVERY)]
    else:
        argv += ["--agent", TAP_AGENT]
    child = procs.spawn(f"{variant}-{rep}", argv)
    if variant == "console":
        wait_until(lambda: _seen(path).get("ok", 0) > 0, _READY_WITHIN, child, "a 200 answer")
        # Node 2's report follows within a second of the first answer's notice.
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: _seen(path).get("all_nodes", 0) > 0, 5.0, child, "both nodes")
    else:
        wait_until(lambda: _seen(path).get("events", {}).get("open"), _READY_WITHIN, child, "open")
    return child


def settle(redis_port: int, limit: float = SETTLE_LIMIT) -> tuple[float, bool]:
    """Wait until the cluster has forgotten its watchers: no notice on the ops channel
    for longer than a notice holds (so no node still counts a tap or a console), no
    report on the console channel for two report periods.

    Returns:
        The seconds waited, and whether it got there within ``limit``.
    """
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    pubsub = client.pubsub()
    ops = ops_channel()
    try:
        pubsub.subscribe(ops, console_channel())
        started = last_notice = last_report = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_notice > NOTICE_LIFETIME + 0.5 and now - last_report > 2 * REPORT_EVERY:
                return now - started, True
            if now - started > limit:
                return now - started, False
            message = pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                channel = message["channel"].decode()
                if channel == ops:
                    last_notice = time.monotonic()
                else:
                    last_report = time.monotonic()
    finally:
        pubsub.close()
        client.close()


# ---- the watcher (a child process) -----------------------------------------------


class _Seen:
    """What a watcher saw, written atomically to ``path`` for the orchestrator."""

    def __init__(self, path: Path, **fields: Any) -> None:
        self.path = path
        self.fields: dict[str, Any] = fields
        self._written = 0.0

    def count(self, group: str, key: str) -> None:
        counts = self.fields.setdefault(group, {})
        counts[key] = counts.get(key, 0) + 1

    def write(self, at_most_every: float = 0.0) -> None:
        now = time.monotonic()
        if now - self._written < at_most_every:
            return
        self._written = now
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.fields))
        os.replace(tmp, self.path)


def _poll_console(a: argparse.Namespace, seen: _Seen) -> None:
    """``GET /api/cluster`` every ``a.every`` seconds on one kept-alive connection,
    like the console page; of each answer only the nodes it lists are kept."""
    expected = set(a.nodes.split(","))
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
    headers = {"Authorization": f"Bearer {a.token}"}
    f = seen.fields
    due = time.monotonic()
    while True:
        f["polls"] += 1
        try:
            conn.request("GET", "/api/cluster", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            seen.count("failed", type(exc).__name__)
        else:
            if resp.status != 200:
                seen.count("failed", f"HTTP {resp.status}")
            else:
                f["ok"] += 1
                f["bytes"] += len(body)
                listed = {n.get("node") for n in json.loads(body).get("nodes", [])}
                if expected <= listed:
                    f["all_nodes"] += 1
                elif f["all_nodes"]:
                    f["missing_after_all"] += 1
        seen.write()
        due += a.every
        time.sleep(max(0.0, due - time.monotonic()))


def _read_tap(a: argparse.Namespace, seen: _Seen) -> None:
    """``GET /api/tap/{agent}``, read line by line until it ends; events counted by
    kind, bodies thrown away."""
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
    conn.request("GET", f"/api/tap/{a.agent}", headers={"Authorization": f"Bearer {a.token}"})
    resp = conn.getresponse()
    f = seen.fields
    f["status"] = resp.status
    seen.write()
    while line := resp.readline():
        f["bytes"] += len(line)
        if line.startswith(b"data: "):
            try:
                kind = str(json.loads(line[6:]).get("kind"))
            except ValueError:
                kind = "unreadable"
            seen.count("events", kind)
            seen.write(0.0 if kind == "open" else 0.5)
        elif line.startswith(b":"):
            f["comments"] += 1
    f["ended"] = True
    seen.write()


def _on_term(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m busbench.operators")
    p.add_argument("mode", choices=("console", "tap"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--nodes", default="", help="console: the node ids every answer should list")
    p.add_argument("--every", type=float, default=POLL_EVERY, help="console: poll period, s")
    p.add_argument("--agent", default=TAP_AGENT, help="tap: the agent tapped")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    if a.mode == "console":
        seen = _Seen(a.out, polls=0, ok=0, all_nodes=0, missing_after_all=0, bytes=0, failed={})
        watch: Callable[[argparse.Namespace, _Seen], None] = _poll_console
    else:
        seen = _Seen(a.out, status=None, events={}, comments=0, bytes=0, ended=False)
        watch = _read_tap
    try:
        watch(a, seen)
    finally:
        seen.write()  # the counts as they stood when the orchestrator stopped it


if __name__ == "__main__":
    main()
