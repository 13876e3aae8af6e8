"""Child processes of the benchmark: started on loopback, waited for, always killed.

Every child gets ``PR_SET_PDEATHSIG`` = SIGKILL, so it dies with the benchmark even if
the benchmark itself is killed; ``Procs.stop_all`` (run from ``finally``) terminates
the rest, SIGKILL after a short grace.
"""

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


class Child:
    def __init__(self, name: str, argv: list[str], log_path: Path, port: int | None) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=die_with_parent,  # the parent is single-threaded
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class Procs:
    """Owns every child process; ``stop_all`` kills whatever is still running."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def spawn(self, name: str, argv: list[str], port: int | None = None) -> Child:
        child = Child(name, argv, self.log_dir / f"{name}.log", port)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        # Servers first in reverse start order (hubs before Redis, so they drain cleanly).
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop(grace=3.0)
        self.children.clear()

    # ---- the services ------------------------------------------------------

    def redis(self) -> Child:
        port = free_port()
        argv = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ]
        child = self.spawn("redis", argv, port)
        wait_until(lambda: _redis_ping(port), 15, child, "PING")
        return child

    def hub(
        self,
        node: str,
        redis_url: str,
        extra: list[str],
        workers: int = 1,
        wrapper: Sequence[str] = (),
    ) -> Child:
        """A hub node; with ``workers`` > 1, one node of that many worker processes;
        ``wrapper`` runs it (``valgrind --tool=callgrind``, say)."""
        port = free_port()
        argv = [
            *wrapper,
            sys.executable,
            "-m",
            "bushub",
            "serve",
            "--port",
            str(port),
            "--node-id",
            node,
            "--redis-url",
            redis_url,
            "--log-level",
            "warning",
            # Per-socket abuse limits off: the benchmark measures relay capacity, and
            # one pair at saturation would pass the default 2,000 messages/s.
            "--rate-messages",
            "0",
            "--rate-bytes",
            "0",
            *(["--workers", str(workers)] if workers > 1 else []),
            *extra,
        ]
        return self.spawn(f"hub-{node}", argv, port)

    def floor(self, name: str, redis_url: str) -> Child:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "busbench.floor",
            "--port",
            str(port),
            "--redis-url",
            redis_url,
        ]
        return self.spawn(name, argv, port)

    def stock(self, name: str) -> Child:
        port = free_port()
        argv = [sys.executable, "-m", "busbench.stock", "--port", str(port)]
        return self.spawn(name, argv, port)


def worker_pids(pid: int) -> list[int]:
    """The worker processes of hub ``pid`` started with ``--workers``, oldest first
    (Linux). Its other child, multiprocessing's resource tracker, is left out."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = sorted(int(p) for p in f.read().split())
    except OSError:
        return []
    workers = []
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    workers.append(child)
        except OSError:
            continue
    return workers


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_ready(port: int) -> bool:
    try:
        return http_get(port, "/readyz", 2.0)[0] == 200
    except OSError:
        return False


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(check, timeout: float, child: Child, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not child.alive:
            raise RuntimeError(
                f"{child.name} exited ({child.proc.returncode}) before {what}:\n{child.log_tail()}"
            )
        time.sleep(0.05)
    raise TimeoutError(f"{child.name}: no {what} after {timeout:.0f}s:\n{child.log_tail()}")


def dropped_counters(port: int) -> dict[str, float]:
    """``bushub_messages_dropped_total`` by reason, from a hub's /metrics."""
    try:
        status, body = http_get(port, "/metrics")
    except OSError:
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("bushub_messages_dropped_total{"):
            labels, _, value = line.rpartition(" ")
            reason = labels.split('reason="', 1)[-1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(value)
    return out


def metric_value(port: int, name: str) -> float | None:
    """One unlabelled gauge or counter from a hub's /metrics; None when unreadable."""
    try:
        status, body = http_get(port, "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    for line in body.decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return float(value)
    return None
