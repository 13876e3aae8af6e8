"""Processes for the load-balancer tests: hub nodes with the deployment test's timings,
and nginx run by ``deploy/nginx/run-local.sh``. Built on ``tests.integration.procs``."""

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.procs import ROOT, TIMEOUT, HubNode, Service, free_port
from tests.support.waiting import wait_until

NGINX_MISSING = (
    "nginx is not on PATH: `make test` installs it (Debian package `nginx`); "
    "by hand: apt-get install -y nginx"
)
RUN_LOCAL = ROOT / "deploy" / "nginx" / "run-local.sh"
ADMIN_TOKEN = "deployment-test-admin"

# Short timings, so that a killed node's agents expire and lost peers are reported
# within seconds. The peer grace outlasts a reconnect through the load balancer.
PRESENCE_TTL = 2.0
PEER_GRACE = 3.0
DRAIN_TIMEOUT = 5.0
# A client coming back after its node was SIGKILLed waits this long for the dead
# node to release its name (it never does): kept well inside the peer grace.
TAKEOVER_TIMEOUT = 1.0


def nginx_path() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    assert path, NGINX_MISSING
    return path


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


class LbHubNode(HubNode):
    """A hub node with the deployment timings and an admin token for ``/agents``."""

    extra_args: tuple[str, ...] = ()

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "bushub", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--node-id", self.node_id]
        argv += ["--presence-ttl", str(PRESENCE_TTL), "--peer-grace", str(PEER_GRACE)]
        argv += ["--drain-timeout", str(DRAIN_TIMEOUT), "--admin-token", ADMIN_TOKEN]
        argv += ["--takeover-timeout", str(TAKEOVER_TIMEOUT)]
        argv += ["--log-level", "info", *self.extra_args]
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        self._spawn(argv)

    def metric(self, name: str) -> float:
        """One unlabelled sample from ``/metrics``."""
        status, text = http_get(self.port, "/metrics")
        assert status == 200, f"{self.name}: /metrics answered {status}"
        match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
        assert match, f"{self.name}: no {name} in /metrics"
        return float(match.group(1))

    def agents(self) -> dict[str, str]:
        """Cluster-wide presence: agent name -> node id."""
        status, text = http_get(self.port, "/agents", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 200, f"{self.name}: /agents answered {status}: {text}"
        rows: Any = json.loads(text)
        if isinstance(rows, dict):
            rows = rows.get("agents", [])
        return {str(row["agent"]): str(row["node"]) for row in rows}


class Nginx(Service):
    """nginx on 127.0.0.1 in front of the given nodes, via run-local.sh."""

    def __init__(self, directory: Path) -> None:
        super().__init__("nginx", directory / "nginx.out")
        self.directory = directory
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.directory / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.directory / "logs" / "access.log"

    def start(self, node_ports: list[int], *, fail_timeout: str | None = "2s") -> None:
        """Start nginx; a port taken between choosing and binding it is chosen again.
        ``fail_timeout`` None leaves render.sh's defaults of the health check."""
        nginx_path()
        for _ in range(5):
            self.port = free_port()
            argv = [str(RUN_LOCAL), "--port", str(self.port), "--dir", str(self.directory)]
            if fail_timeout is not None:
                argv += ["--fail-timeout", fail_timeout]
            argv += [str(p) for p in node_ports]
            self._spawn(argv)
            if self._wait_listening():
                return
            self.wait()
            if "Address already in use" not in self.log_path.read_text(errors="replace"):
                raise RuntimeError(f"nginx exited ({self.returncode}): see {self.log_path}")
        raise RuntimeError(f"nginx found no free port: see {self.log_path}")

    def restart(self, node_ports: list[int], *, fail_timeout: str = "2s") -> None:
        """Start nginx again on the port it had (after `cut`), so clients dial the same URL."""
        argv = [str(RUN_LOCAL), "--port", str(self.port), "--dir", str(self.directory)]
        argv += ["--fail-timeout", fail_timeout, *[str(p) for p in node_ports]]
        self._spawn(argv)
        if not self._wait_listening():
            raise RuntimeError(f"nginx exited ({self.returncode}): see {self.log_path}")

    def cut(self) -> None:
        """SIGKILL the master and its workers: every proxied TCP connection ends with no
        WebSocket close frame, in both directions, and nothing listens on the port."""
        workers = self._children()
        self.kill()  # the master first, or it would start new workers
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: all(not _running(pid) for pid in workers),
            what="nginx workers gone",
        )

    def _children(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        if path.exists():
            return [int(pid) for pid in path.read_text().split()]
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.pid:
                    found.append(int(stat.parent.name))
        return found

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                if http_get(self.port, "/nginx-healthz")[0] == 200:
                    return True
            except OSError:
                pass
            if not self.alive:
                return False
            time.sleep(0.05)
        raise TimeoutError("nginx did not answer /nginx-healthz")

    def stop(self) -> None:
        # SIGTERM is nginx's fast shutdown: workers close their sockets at once.
        self.signal(signal.SIGTERM)
        super().stop()


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed one's sockets are closed by then)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
