"""Real processes for the integration tests: redis-server, hub nodes, agent programs.

Everything binds 127.0.0.1 on free ports. Every wait is for an observable event (a port
answering, ``/readyz`` saying 200, a JSON line from an agent) with a timeout derived from
`TIMEOUT`, which ``BUSHUB_TEST_TIMEOUT`` scales on slow machines.
"""

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import pytest

from tests.integration.redis_auth import RedisAuth
from tests.support.ports import free_port
from tests.support.reports import register_log
from tests.support.tlscerts import ServerCerts, write_server_certs
from tests.support.waiting import TIMEOUT, wait_until

ROOT = Path(__file__).resolve().parents[2]

# Hub timings the suite runs with (short, so that expiry tests finish quickly).
PRESENCE_TTL = 2.0
# What a program may take to import pipecat before its first event, beyond the
# expected event's own timeout.
_IMPORT_ALLOWANCE = 20.0
PEER_GRACE = 1.0
PRESENCE_REFRESH = PRESENCE_TTL / 3  # the hub refreshes presence every third of the TTL


class Service:
    """A long-running child process whose stdout and stderr go to one log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in _reap
        self._log.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n")
        self._log.flush()
        self._proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self._proc is not None
            self._proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = TIMEOUT) -> int:
        assert self._proc is not None
        code = self._proc.wait(timeout)
        self._reap()
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self._proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self._proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(TIMEOUT)
        self._reap()

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class RedisServer(Service):
    """A throwaway redis-server: no persistence, its own port.

    Args:
        auth: Lock it with a password or an ACL user; its ``url`` then carries the
            hub's credentials.
        unix_socket: Listen on a unix socket too (``unix_url``), in a directory of
            its own: a test's tmp path can pass the 107 bytes a socket path may hold.
        tls: Speak TLS only, with a certificate for 127.0.0.1 from a CA of its own;
            its ``url`` is then ``rediss://`` and names the CA (``ssl_ca_certs``).
    """

    def __init__(
        self,
        log_path: Path,
        auth: RedisAuth | None = None,
        *,
        unix_socket: bool = False,
        tls: bool = False,
    ) -> None:
        super().__init__("redis", log_path)
        self.port = free_port()
        self.auth = auth
        self.socket_path: Path | None = None
        if unix_socket:
            self.socket_path = Path(tempfile.mkdtemp(prefix="bushub-redis-")) / "redis.sock"
        self.tls: ServerCerts | None = None
        if tls:
            self.tls = write_server_certs(log_path.parent / f"redis-tls-{self.port}")

    @property
    def url(self) -> str:
        userinfo = self.auth.userinfo() if self.auth else ""
        if self.tls is not None:
            return f"rediss://{userinfo}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{userinfo}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """The same server through its unix socket (redis-py's links, not the raw ones)."""
        assert self.socket_path is not None, "started without unix_socket=True"
        userinfo = self.auth.userinfo() if self.auth else ""
        return f"unix://{userinfo}{self.socket_path}?db=0"

    def auth_args(self) -> list[str]:
        """redis-server options that lock it (none when open)."""
        return self.auth.server_args() if self.auth else []

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        if self.tls is not None:
            argv = ["redis-server", "--port", "0", "--tls-port", str(self.port)]
            argv += ["--bind", "127.0.0.1", "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            argv += ["--tls-ca-cert-file", str(self.tls.ca)]
        if self.socket_path is not None:
            self.socket_path.parent.mkdir(exist_ok=True)  # removed by an earlier stop()
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        self._spawn([*argv, "--save", "", "--appendonly", "no", *self.auth_args()])
        wait_until(self._pong, TIMEOUT, what="PONG", proc=self)

    def stop(self) -> None:
        super().stop()
        if self.socket_path is not None:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def cli(self, *args: str) -> str:
        """Run one redis-cli command against this server."""
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *self.cli_login(), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        return result.stdout

    def cli_login(self) -> list[str]:
        """redis-cli options that reach the server (TLS) and log the harness in (none
        when open)."""
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls is not None else []
        return tls + (self.auth.cli_args() if self.auth else [])

    def _pong(self) -> bool:
        login = self.auth.auth_command() if self.auth else b""
        try:
            with self._connect() as sock:
                sock.sendall(login + b"PING\r\n")
                answer = b""
                # AUTH's +OK, then PING's +PONG (or an error line for either).
                while answer.count(b"\r\n") < (2 if login else 1):
                    chunk = sock.recv(64)
                    if not chunk:
                        return False
                    answer += chunk
                return answer.endswith(b"+PONG\r\n")
        except OSError:
            return False

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        if self.tls is None:
            return sock
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        return context.wrap_socket(sock, server_hostname="127.0.0.1")


class HubNode(Service):
    """One ``bushub serve`` process; restartable on the same port."""

    def __init__(
        self,
        node_id: str,
        log_path: Path,
        redis_url: str | None,
        *,
        presence_ttl: float = PRESENCE_TTL,
    ) -> None:
        super().__init__(f"hub {node_id}", log_path)
        self.node_id = node_id
        self.redis_url = redis_url
        self.presence_ttl = presence_ttl
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "bushub", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--node-id", self.node_id]
        argv += ["--presence-ttl", str(self.presence_ttl), "--peer-grace", str(PEER_GRACE)]
        argv += ["--log-level", "info"]
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        self._spawn(argv)

    def wait_ready(self) -> None:
        wait_until(lambda: self.http_status("/readyz") == 200, what="200 on /readyz", proc=self)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def http_status(self, path: str) -> int | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()


class AgentProcess(Service):
    """One agent program; its stdout is a stream of JSON events, read as they come."""

    def __init__(self, name: str, log_path: Path, events_path: Path) -> None:
        super().__init__(name, log_path)
        self.events_path = events_path
        self.events: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._eof = False

    @classmethod
    def reported(cls, request: "pytest.FixtureRequest", folder: Path, label: str) -> "AgentProcess":
        """An agent whose stderr and events land in ``folder`` and, if the test fails,
        in its report."""
        proc = cls(label, folder / f"{label}.log", folder / f"{label}.events")
        register_log(request, f"{label} stderr", proc.log_path)
        register_log(request, f"{label} events", proc.events_path)
        return proc

    def end(self) -> None:
        """At the end of a test: kill it if it still runs, else reap it."""
        if self.alive:
            self.kill()
        else:
            self.wait()

    def start(self, argv: list[str]) -> None:
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in _reap
        self._proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with open(self.events_path, "a") as record:
            for raw in self._proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                record.write(line + "\n")
                record.flush()
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "_unparsed", "line": line}
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def named(self, name: str) -> list[dict[str, Any]]:
        """Every event called ``name`` seen so far."""
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    def expect(self, name: str, /, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """The first not yet expected event called ``name`` whose fields match.

        Raises:
            AssertionError: none came within ``timeout``, or the program ended first.
        """
        deadline = time.monotonic() + timeout

        def find() -> int | None:
            for i, event in enumerate(self.events):
                if i in self._taken or event.get("event") != name:
                    continue
                if all(event.get(k) == v for k, v in fields.items()):
                    return i
            return None

        with self._cond:
            while True:
                index = find()
                if index is not None:
                    self._taken.add(index)
                    return self.events[index]
                remaining = deadline - time.monotonic()
                if not self.events:
                    # Still importing pipecat (seconds; on a busy machine more than a
                    # step's timeout: a fresh-clone run saw no event in 10 s). The
                    # timing a test asserts is between events, never from the start.
                    remaining += _IMPORT_ALLOWANCE
                if self._eof or remaining <= 0:
                    why = "the program ended" if self._eof else f"{timeout:.1f}s passed"
                    seen = [e.get("event") for e in self.events]
                    raise AssertionError(
                        f"{self.name}: no {name!r} event {fields or ''} ({why}); saw {seen}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def expect_done(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The client's ``done`` event, asserting that its scenario passed."""
        done = self.expect("done", timeout)
        assert done.get("ok") is True, f"{self.name} scenario failed: {done.get('error')}"
        return done

    def _reap(self) -> None:
        # The process has exited: read its last lines, then release the pipe and log.
        if self._reader is not None:
            self._reader.join(TIMEOUT)
        if self._proc is not None and self._proc.stdout is not None:
            with contextlib.suppress(OSError):
                self._proc.stdout.close()
        super()._reap()
