"""One worker process of a node started with ``--workers N`` (see bushub.supervisor).

A worker is a node of its own, named ``<node-id>-w<i>``: its own hub, broker
connections, presence records, node channel and metrics. Workers of one node meet
through the broker exactly as nodes on different machines do, so presence, takeover
and routing between them need nothing of their own. What they share is the port: each
binds it with SO_REUSEPORT and the kernel spreads new connections over them.
"""

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from dataclasses import replace
from multiprocessing.connection import Connection

import uvicorn

from bushub import gcpolicy
from bushub.app import create_app
from bushub.cli import DrainingServer, uvicorn_config
from bushub.hub import Hub
from bushub.logs import configure_logging
from bushub.settings import Settings
from bushub.siblings import WorkerSlot

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# uvicorn's exit code for a lifespan that failed to start.
STARTUP_FAILURE = 3


def worker_node_id(node_id: str, index: int | str) -> str:
    """The node id worker ``index`` of node ``node_id`` is known by in the cluster."""
    return f"{node_id}-w{index}"


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` in the port's SO_REUSEPORT group.

    Not listening yet: uvicorn starts listening once the node has started, so the
    kernel sends no connection to a worker that could not serve it.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEPORT: the kernel lets only sockets of the same user that also ask for
        # it share the port (a restarted worker among them). SO_REUSEADDR as well, or
        # the TIME_WAIT connections of a process that served the port without
        # --workers (a node switched to --workers at a restart) refused the bind for a
        # minute. It lets another process bind the port only while none of it listens
        # (the reserving socket never does): that process then fails our workers'
        # start, as one that had the port first would; it gets no connection of ours.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _die_with(parent: int) -> None:
    """Drain and exit (SIGTERM) when the supervisor dies, however it dies.

    Linux only (prctl); elsewhere an orphaned worker serves on until stopped.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerServer(DrainingServer):
    """A draining server that tells the supervisor once it is serving."""

    def __init__(
        self, config: uvicorn.Config, settings: Settings, hub: Hub, started: Connection
    ) -> None:
        super().__init__(config, settings, hub)
        self._started = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        with contextlib.suppress(OSError):
            self._started.send_bytes(b"serving")


def run_worker(settings: Settings, slot: WorkerSlot, supervisor: int, started: Connection) -> None:
    """The worker process's body: serve as worker ``slot.index`` until signalled.

    Args:
        settings: The node's settings; the port is a concrete one (never 0).
        slot: Which worker this is, and where the control sockets live.
        supervisor: The supervisor's pid, whose death ends this worker.
        started: Told ``serving`` once the worker serves the port.
    """
    # Signals come from the supervisor only: a Ctrl-C in a terminal (sent to the
    # whole process group) must not reach a worker as well, where it would count as
    # the second signal that ends a drain at once.
    os.setpgrp()
    _die_with(supervisor)
    settings = replace(settings, node_id=worker_node_id(settings.node_id, slot.index), workers=1)
    configure_logging(settings.log_level, settings.log_format)
    sock = reuseport_socket(settings.host, settings.port)
    app = create_app(settings, worker=slot)
    server = WorkerServer(uvicorn_config(app, settings), settings, app.state.hub, started)
    gcpolicy.apply()
    server.run(sockets=[sock])
    if os.getppid() != supervisor:
        _remove_control_sockets(slot)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _remove_control_sockets(slot: WorkerSlot) -> None:
    """This worker's control socket, those of workers gone before it (killed while the
    supervisor lived, their files left for it to remove), and the runtime directory
    once it is empty: the supervisor that removes them died first (SIGKILL), so the
    last worker out does."""
    with contextlib.suppress(OSError):
        os.unlink(slot.control_path(slot.index))
    for index in range(slot.count):
        path = slot.control_path(index)
        if index != slot.index and _nobody_listens(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(slot.runtime_dir)


def _nobody_listens(path: str) -> bool:
    """Whether the unix socket at ``path`` is a file its worker left (a connection is
    refused); False while one answers, or when there is no file."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False
