"""``bushub serve --workers N``: N worker processes on one port, and the one that minds them.

The supervisor serves nothing itself. It reserves the port (a bound, never listening
SO_REUSEPORT socket, so that a restarted worker can always bind it again and port 0
is picked once for all), holds the address's lock (bushub.portlock: a second
``--workers`` node on the same address is refused), creates a private runtime
directory for the workers' control sockets (bushub.siblings), and starts each worker
(bushub.worker) as a fresh process.

- A worker that exits while the node is not stopping is started again after a delay
  that doubles from ``RESTART_FIRST`` up to ``RESTART_MAX`` (and starts from the first
  again once a worker has run ``RESTART_RESET_AFTER``). A worker that cannot start the
  first time stops the node instead (exit code 3, a single node's): that is a setting
  or the environment, which restarting will not mend.
- SIGTERM or SIGINT: every worker is sent SIGTERM and drains as a single node does;
  the supervisor waits for them (at most the drain timeout plus ``EXIT_MARGIN``, then
  SIGKILL) and exits 0 if each exited by itself. A second signal kills them at once.
- Workers die with the supervisor (bushub.worker asks the kernel for a SIGTERM when
  their parent dies), so no orphan keeps the port.
- A worker that answers nothing on its control socket for ``--worker-timeout`` (hung
  or stopped: it never exits) is killed, and so started again (bushub.workerwatch).
"""

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from bushub import portlock
from bushub.settings import Settings
from bushub.siblings import WorkerSlot
from bushub.worker import STARTUP_FAILURE, reuseport_socket, run_worker, worker_node_id
from bushub.workerwatch import ASK_EVERY, Silence, answers

log = logging.getLogger("bushub.supervisor")

RESTART_FIRST = 0.5
RESTART_MAX = 10.0
RESTART_RESET_AFTER = 60.0
# Seconds past --drain-timeout a worker may take to exit (uvicorn's own shutdown,
# closing the broker) before it is killed.
EXIT_MARGIN = 5.0
# A fresh interpreter for each worker: nothing of the supervisor's state is inherited,
# and a restarted worker starts exactly like the first. (Spawning also starts
# multiprocessing's resource tracker, a small idle child of the supervisor; the node
# creates nothing it tracks.)
_SPAWN = multiprocessing.get_context("spawn")


@dataclass
class _Worker:
    """One worker's slot: the process filling it now, and its restart schedule."""

    index: int
    process: BaseProcess | None = None
    started: Connection | None = None  # the worker says "serving" here
    serving: bool = False
    ever_served: bool = False
    began: float = 0.0
    delay: float = RESTART_FIRST
    restart_at: float | None = None
    exits: list[int | None] = field(default_factory=list)
    silence: Silence = field(default_factory=Silence)


# The longest path of a unix socket (sun_path, with its NUL) on Linux; the workers'
# control sockets are ``w<index>.sock`` in the runtime directory.
_UNIX_PATH_MAX = 107
_SOCKET_NAME_MAX = len("/w999.sock")


def runtime_directory() -> str:
    """A private directory (0700) for the workers' control sockets: in
    ``$XDG_RUNTIME_DIR``, or the system's temporary directory where that is unset,
    missing or too deep for a unix socket's path (a worker then failed to start
    with a traceback, the node with it).

    Raises:
        OSError: no directory could be made.
    """
    chosen = os.environ.get("XDG_RUNTIME_DIR")
    if chosen:
        reason = None
        if not os.path.isdir(chosen):
            reason = "does not exist"
        elif len(os.path.join(chosen, "bushub-xxxxxxxx")) + _SOCKET_NAME_MAX > _UNIX_PATH_MAX:
            reason = "is too long a path for the workers' unix sockets"
        if reason is not None:
            log.warning("XDG_RUNTIME_DIR %s %s: using %s", chosen, reason, tempfile.gettempdir())
            chosen = None
    return tempfile.mkdtemp(prefix="bushub-", dir=chosen)


class Supervisor:
    """Starts, restarts and stops the workers of one node."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._workers = [_Worker(i) for i in range(settings.workers)]
        self._signals = 0
        self._stop_deadline: float | None = None
        self._killed = False
        self._failed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    def run(self) -> int:
        """Serve until signalled; the process's exit code."""
        try:
            reserved = reuseport_socket(self.settings.host, self.settings.port)
        except OSError as exc:  # as uvicorn says it for a single node
            log.error("cannot serve %s:%d: %s", self.settings.host, self.settings.port, exc)
            return STARTUP_FAILURE
        host, port = reserved.getsockname()[:2]
        try:
            lock = portlock.hold(host, port)
        except portlock.AddressTaken as exc:
            reserved.close()
            log.error("cannot serve %s:%d: %s", self.settings.host, port, exc)
            return STARTUP_FAILURE
        self.settings = replace(self.settings, port=port)
        try:
            runtime_dir = runtime_directory()
        except OSError as exc:
            lock.close()
            reserved.close()
            log.error("cannot make the workers' runtime directory: %s", exc)
            return STARTUP_FAILURE
        self._slot_dir = runtime_dir
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        log.info(
            "node %s: %d workers on %s:%d (SO_REUSEPORT), each a node named %s",
            self.settings.node_id,
            len(self._workers),
            self.settings.host,
            port,
            worker_node_id(self.settings.node_id, "<i>"),
        )
        try:
            for worker in self._workers:
                self._start(worker)
            self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_all()
            reserved.close()
            lock.close()
            shutil.rmtree(runtime_dir, ignore_errors=True)
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._failed:
            return STARTUP_FAILURE
        if self._killed:
            return 1
        log.info("workers stopped; exiting")
        return 0

    # ---- signals -------------------------------------------------------------

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            os.write(self._wake_w, b"s")  # wake the loop up from its wait

    def _begin_stop(self, why: str) -> None:
        if self._stop_deadline is not None:
            return
        live = [w for w in self._workers if self._alive(w)]
        log.info("%s: draining %d workers", why, len(live))
        self._stop_deadline = time.monotonic() + self.settings.drain_timeout + EXIT_MARGIN
        for worker in self._workers:
            worker.restart_at = None
            self._send(worker, signal.SIGTERM)

    # ---- the loop ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if self._signals and self._stop_deadline is None:
                self._begin_stop("signal received")
            if self._signals > 1 and not self._killed:
                log.warning("second signal: killing the workers")
                self._kill_all()
            if self._stop_deadline is not None and not any(map(self._alive, self._workers)):
                return
            now = time.monotonic()
            if self._stop_deadline is not None and now >= self._stop_deadline:
                stuck = [w for w in self._workers if self._alive(w)]
                log.warning(
                    "%s still running %.1fs after SIGTERM: killing %s (the node exits 1)",
                    ", ".join(
                        f"worker {w.index} (pid {w.process.pid if w.process else '?'})"
                        for w in stuck
                    ),
                    self.settings.drain_timeout + EXIT_MARGIN,
                    "it" if len(stuck) == 1 else "them",
                )
                self._kill_all()
                continue
            for worker in self._workers:
                if worker.restart_at is not None and now >= worker.restart_at:
                    self._start(worker)
            waiting_for: list[Any] = [self._wake_r]
            for worker in self._workers:
                if worker.process is not None:
                    waiting_for.append(worker.process.sentinel)
                if worker.started is not None:
                    waiting_for.append(worker.started)
            wait(waiting_for, timeout=self._next_timeout(now))
            self._drain_wakeups()
            for worker in self._workers:
                self._check(worker)
            if self._stop_deadline is None and self.settings.worker_timeout > 0:
                for worker in self._workers:
                    self._watch(worker)

    def _next_timeout(self, now: float) -> float | None:
        times = [w.restart_at for w in self._workers if w.restart_at is not None]
        if self._stop_deadline is not None:
            times.append(self._stop_deadline)
        elif self.settings.worker_timeout > 0:
            times.append(now + ASK_EVERY)
        return max(0.0, min(times) - now) if times else None

    def _watch(self, worker: _Worker) -> None:
        """Ask a serving worker whether it runs, when due; kill one silent too long."""
        now = time.monotonic()
        if not (worker.serving and self._alive(worker)) or not worker.silence.due(now):
            return
        slot = WorkerSlot(worker.index, len(self._workers), self._slot_dir)
        answered = answers(slot.control_path(worker.index))
        silent = worker.silence.heard(answered, now)
        assert worker.process is not None
        if not answered and not silent:  # the first question it left unanswered
            log.warning(
                "worker %d (pid %s) does not answer; killed after %.0fs of that",
                worker.index,
                worker.process.pid,
                self.settings.worker_timeout,
            )
        elif silent >= self.settings.worker_timeout:
            log.error(
                "worker %d (pid %s) has answered nothing for %.1fs (hung or stopped): killing it",
                worker.index,
                worker.process.pid,
                silent,
            )
            self._send(worker, signal.SIGKILL)

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 64):
                pass

    # ---- one worker ----------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        receive, send = _SPAWN.Pipe(duplex=False)
        slot = WorkerSlot(worker.index, len(self._workers), self._slot_dir)
        process = _SPAWN.Process(
            target=run_worker,
            args=(self.settings, slot, os.getpid(), send),
            name=worker_node_id(self.settings.node_id, worker.index),
        )
        process.start()
        send.close()  # the worker holds the other copy; its exit closes the pipe
        worker.process = process
        worker.started = receive
        worker.serving = False
        worker.began = time.monotonic()
        worker.restart_at = None
        worker.silence.reset()

    def _check(self, worker: _Worker) -> None:
        """Take note of what the worker said and whether it exited."""
        if worker.started is not None and worker.started.poll():
            try:
                worker.started.recv_bytes()
                worker.serving = worker.ever_served = True
                assert worker.process is not None
                log.info(
                    "worker %d serving as node %s (pid %s)",
                    worker.index,
                    worker_node_id(self.settings.node_id, worker.index),
                    worker.process.pid,
                )
            except (EOFError, OSError):
                pass  # it exited; the sentinel tells
            self._close_pipe(worker)
        process = worker.process
        if process is None or process.exitcode is None:
            return
        process.join()
        self._close_pipe(worker)
        worker.process = None
        code = process.exitcode
        worker.exits.append(code)
        if self._stop_deadline is not None:
            log.info("worker %d (pid %s) exited (%s)", worker.index, process.pid, _describe(code))
            return
        if not worker.ever_served:
            log.error(
                "worker %d could not start (%s): stopping the node", worker.index, _describe(code)
            )
            self._failed = True
            self._begin_stop("a worker failed to start")
            return
        ran = time.monotonic() - worker.began
        if ran > RESTART_RESET_AFTER:
            worker.delay = RESTART_FIRST
        log.warning(
            "worker %d (pid %s) exited (%s) after %.1fs; restarting it in %.1fs",
            worker.index,
            process.pid,
            _describe(code),
            ran,
            worker.delay,
        )
        worker.restart_at = time.monotonic() + worker.delay
        worker.delay = min(worker.delay * 2, RESTART_MAX)

    @staticmethod
    def _close_pipe(worker: _Worker) -> None:
        if worker.started is not None:
            worker.started.close()
            worker.started = None

    @staticmethod
    def _alive(worker: _Worker) -> bool:
        return worker.process is not None and worker.process.exitcode is None

    def _send(self, worker: _Worker, sig: int) -> None:
        if worker.process is not None and worker.process.pid is not None and self._alive(worker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, sig)

    def _kill_all(self) -> None:
        for worker in self._workers:
            if self._alive(worker):
                self._killed = True
                self._send(worker, signal.SIGKILL)
        for worker in self._workers:
            if worker.process is not None:
                worker.process.join(5)
                self._close_pipe(worker)


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
