"""Idle agent sockets on one fresh server process, then a quiet window.

The orchestrator's side of the idle measurement. ``count`` sockets are agent pairs
watching each other (``idleA{n}?peer=idleB{n}`` and ``idleB{n}?peer=idleA{n}``),
opened by one or more load-generator processes (``busbench.loadgen``, each its own
share, each over its own ``127.0.0.x`` source addresses), with websockets' default
keepalive (a ping every 20 s, as the stock proxy's client keeps). After they are open
and have settled, and an optional hold, a quiet window measures:

- the server's CPU time (utime+stime from ``/proc/<pid>/stat``, all threads),
- Redis's commands (``total_commands_processed`` from ``INFO``, less the bench's own
  one ``INFO`` inside the window) and CPU (``used_cpu_sys + used_cpu_user``),
- the load generators' CPU (the keepalive pings cost the client too),

and the server's RSS (``VmRSS``) before the sockets open and after they settle. At the
end each generator counts the sockets the server closed, then closes its own.
Every wait is bounded; a generator left without word closes its sockets and exits.
"""

import json
import math
import os
import resource
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busbench.loadgen import machine_times, proc_rss_kb, proc_times
from busbench.procs import die_with_parent, worker_pids

# Descriptors a server or generator needs besides its sockets (Redis, logs, loop, ...).
FD_MARGIN = 256


@dataclass
class IdlePlan:
    """What one idle measurement does; the CLI's ``--idle-*`` flags."""

    count: int
    ping: float  # keepalive ping interval, s (0: none); the timeout is the same
    window: float
    hold: float
    per_loadgen: int
    per_addr: int
    compression: str
    concurrency: int = 32
    tag: str = ""

    @property
    def settle(self) -> float:
        """Seconds between the last socket opening and the first RSS reading."""
        return max(2.0, min(15.0, self.count / 5000))

    @property
    def open_timeout(self) -> float:
        """The generators stop opening after this; the rest count as not tried."""
        return 60.0 + self.count / 200

    def shares(self) -> list[tuple[int, int]]:
        """(first socket, count) per load generator: whole pairs each."""
        n = max(1, math.ceil(self.count / self.per_loadgen))
        pairs = self.count // 2
        out, first = [], 0
        for k in range(n):
            size = 2 * (pairs // n + (1 if k < pairs % n else 0))
            out.append((first, size))
            first += size
        return [s for s in out if s[1]]

    def addresses(self) -> list[str]:
        last = max(0, self.count - 1) // self.per_addr + 1
        return [f"127.0.0.{k}" for k in range(1, last + 1)]


def fd_shortfall(plan: IdlePlan, processes: int = 1) -> str:
    """Why this machine cannot hold the sockets (RLIMIT_NOFILE) in ``processes``
    server processes (a hub's workers share them), or ``""``."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 30
    # The kernel spreads a hub's sockets over its workers only about evenly.
    per_process = plan.count if processes == 1 else int(plan.count / processes * 1.1)
    if per_process + FD_MARGIN > limit:
        return (
            f"RLIMIT_NOFILE hard limit {hard} is below the {per_process + FD_MARGIN:,} "
            f"descriptors each of {processes} server process(es) needs for these sockets"
        )
    return ""


# ---- Redis INFO, on a raw socket: no client library's own commands in the count ----


class RedisInfo:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.calls = 0

    def read(self, section: str = "all") -> dict[str, str]:
        """``INFO <section>`` as a flat dict (one command on this connection)."""
        self.sock.sendall(b"INFO " + section.encode() + b"\r\n")
        self.calls += 1
        buf = b""
        while b"\r\n" not in buf:
            buf += self._recv()
        head, _, rest = buf.partition(b"\r\n")
        if not head.startswith(b"$"):
            raise RuntimeError(f"INFO: unexpected reply {head[:80]!r}")
        size = int(head[1:])
        while len(rest) < size + 2:
            rest += self._recv()
        info: dict[str, str] = {}
        for line in rest[:size].decode(errors="replace").splitlines():
            if line and not line.startswith("#") and ":" in line:
                key, _, value = line.partition(":")
                info[key] = value
        return info

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("INFO: Redis closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def command_calls(info: dict[str, str]) -> dict[str, int]:
    """Calls per command from the ``commandstats`` section."""
    out = {}
    for key, value in info.items():
        if key.startswith("cmdstat_"):
            fields = dict(kv.split("=", 1) for kv in value.split(",") if "=" in kv)
            out[key[len("cmdstat_") :]] = int(fields.get("calls", 0))
    return out


def redis_figures(before: dict[str, str], after: dict[str, str], ours: int) -> dict[str, Any]:
    """Redis over the window: commands (ours left out), CPU seconds, calls by command."""

    def num(info: dict[str, str], key: str) -> float:
        return float(info.get(key, 0) or 0)

    calls0, calls1 = command_calls(before), command_calls(after)
    by_command = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v - calls0.get(k, 0)}
    if by_command.get("info"):
        by_command["info"] -= ours
        if not by_command["info"]:
            del by_command["info"]
    return {
        "commands": int(num(after, "total_commands_processed"))
        - int(num(before, "total_commands_processed"))
        - ours,
        "cpu_s": sum(num(after, k) - num(before, k) for k in ("used_cpu_sys", "used_cpu_user")),
        "by_command": by_command,
        "keys_after": after.get("db0", ""),
        "clients_after": int(num(after, "connected_clients")),
    }


# ---- the load generators ------------------------------------------------------------


@dataclass
class Generator:
    proc: subprocess.Popen[bytes]
    result_path: Path
    share: tuple[int, int]
    buf: bytes = b""
    events: list[dict[str, Any]] = field(default_factory=list)

    def tell(self, word: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass


def _spawn(
    plan: IdlePlan,
    url: str,
    k: int,
    share: tuple[int, int],
    work: Path,
    more: dict[str, Any] | None = None,
) -> Generator:
    """Start load generator ``k`` on its share; ``more`` adds to (or overrides) its job."""
    host, _, port = url.removeprefix("ws://").partition(":")
    job: dict[str, Any] = {
        "kind": "idle",
        "url": url,
        "host": host,
        "port": int(port),
        "first": share[0],
        "count": share[1],
        "tag": plan.tag,
        "per_addr": plan.per_addr,
        "compression": plan.compression,
        "ping_interval": plan.ping,
        "ping_timeout": plan.ping,
        "concurrency": plan.concurrency,
        "open_timeout": plan.open_timeout,
        "warm": 100 if k == 0 else 0,
        "hold_timeout": plan.hold + plan.window + plan.settle + 300,
        **(more or {}),
    }
    label = f"{job['kind']}{plan.tag}-{k}"
    job_path, result_path = work / f"job-{label}.json", work / f"result-{label}.json"
    job_path.write_text(json.dumps(job))
    with open(work / f"loadgen-{label}.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "busbench.loadgen", str(job_path), str(result_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=die_with_parent,  # the parent is single-threaded
        )
    return Generator(proc, result_path, share)


def pump(gens: list[Generator], timeout: float) -> None:
    """Read what the generators said within ``timeout`` s; raises on one that exits."""
    fds = {g.proc.stdout.fileno(): g for g in gens if g.proc.stdout is not None}
    ready, _, _ = select.select(list(fds), [], [], max(0.0, timeout))
    for fd in ready:
        g = fds[fd]
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            g.proc.wait(10)
            raise RuntimeError(f"load generator {g.share} exited ({g.proc.returncode})")
        g.buf += chunk
        while b"\n" in g.buf:
            line, _, g.buf = g.buf.partition(b"\n")
            g.events.append(json.loads(line))


def said(g: Generator, event: str) -> bool:
    return any(e["event"] == event for e in g.events)


def _await_event(gens: list[Generator], event: str, timeout: float) -> None:
    """Until every generator has said ``event``; raises on a generator that exits."""
    deadline = time.monotonic() + timeout
    waiting = [g for g in gens if not said(g, event)]
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(waiting)} load generator(s) did not say {event!r}")
        try:
            pump(waiting, min(left, 1.0))
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} before {event!r}") from None
        waiting = [g for g in waiting if not said(g, event)]


def close_generators(gens: list[Generator]) -> list[dict[str, Any]]:
    """Tell every generator to close its sockets; their results, in order."""
    for g in gens:
        g.tell("close")
    results = []
    for g in gens:
        g.proc.wait(120)
        if g.proc.returncode != 0:
            raise RuntimeError(f"load generator {g.share} failed ({g.proc.returncode})")
        results.append(json.loads(g.result_path.read_text()))
    return results


def reap(gens: list[Generator]) -> None:
    """Kill what is left of the generators (a run that failed half-way)."""
    for g in gens:
        if g.proc.poll() is None:
            g.proc.kill()
            g.proc.wait()


def _cpu_s(pid: int) -> float:
    return sum(proc_times(pid))


def _server_pids(pid: int) -> list[int]:
    """A server process and, for a hub with ``--workers``, its workers."""
    return [pid, *worker_pids(pid)]


def server_rss_kb(pid: int) -> int:
    """Resident memory of a server: its process and its workers."""
    return sum(proc_rss_kb(p) for p in _server_pids(pid))


def _snapshot(server_pid: int, redis_pid: int, gens: list[Generator]) -> dict[str, Any]:
    return {
        "t": time.monotonic(),
        "server": sum(_cpu_s(p) for p in _server_pids(server_pid)),
        "redis_proc": _cpu_s(redis_pid),
        "loadgen": sum(_cpu_s(g.proc.pid) for g in gens),
        "machine": machine_times(),
    }


def _sum_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0) + v
    return out


def measure(
    plan: IdlePlan,
    url: str,
    server_pid: int,
    redis: tuple[int, int],
    work: Path,
    log: Any,
) -> dict[str, Any]:
    """Open ``plan.count`` idle agent sockets on one server, hold them, measure a window.

    ``redis`` is (pid, port) of the bench's own redis-server.
    """
    redis_pid, redis_port = redis
    gens = [_spawn(plan, url, k, share, work) for k, share in enumerate(plan.shares())]
    info = RedisInfo(redis_port)
    try:
        _await_event(gens, "warmed", 120)
        time.sleep(1.0)
        before = {"server": server_rss_kb(server_pid), "redis": proc_rss_kb(redis_pid)}
        for g in gens:
            g.tell("open")
        _await_event(gens, "opened", plan.open_timeout + 60)
        opened = sum(e["opened"] for g in gens for e in g.events if e["event"] == "opened")
        log(f"  {opened:,}/{plan.count:,} open; settle {plan.settle:.0f} s, hold {plan.hold:g} s")
        time.sleep(plan.settle)
        after = {"server": server_rss_kb(server_pid), "redis": proc_rss_kb(redis_pid)}
        time.sleep(plan.hold)
        log(f"  quiet window: {plan.window:g} s")
        info0, snap0 = info.read(), _snapshot(server_pid, redis_pid, gens)
        time.sleep(plan.window)
        snap1, info1 = _snapshot(server_pid, redis_pid, gens), info.read()
        rss_end = {"server": server_rss_kb(server_pid), "redis": proc_rss_kb(redis_pid)}
        results = close_generators(gens)
    finally:
        info.close()
        reap(gens)
    wall = snap1["t"] - snap0["t"]
    machine = {k: v - snap0["machine"].get(k, 0.0) for k, v in snap1["machine"].items()}
    return {
        "count": plan.count,
        "opened": sum(r["opened"] for r in results),
        "still_open": sum(r["still_open"] for r in results),
        "closed_by_server": _sum_counts([r["closed_by_server"] for r in results]),
        "errors": _sum_counts([r["errors"] for r in results]),
        "open_s": max((r["open_s"] or 0.0) for r in results),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_end_kb": rss_end,
        "nofile": results[0]["nofile"],
        "loadgens": len(results),
        "source_addresses": plan.addresses(),
        "ping_interval": plan.ping,
        "hold_s": plan.hold,
        "settle_s": plan.settle,
        "window": {
            "wall_s": wall,
            "server_cpu_s": snap1["server"] - snap0["server"],
            "redis_proc_cpu_s": snap1["redis_proc"] - snap0["redis_proc"],
            "loadgen_cpu_s": snap1["loadgen"] - snap0["loadgen"],
            "machine_s": machine,
            "redis": redis_figures(info0, info1, ours=1),
        },
    }
