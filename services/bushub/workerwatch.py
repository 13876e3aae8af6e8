"""Whether each worker of a ``--workers`` node still answers: the supervisor's watch.

The supervisor learns of a worker that exits from its process sentinel; one that
hangs (a deadlock, a loop that never yields, a process stopped) exits never, and the
kernel goes on handing it about one in N of the node's new connections, which then
wait for good. So the supervisor asks each serving worker for its readiness on its
control socket (``bushub.siblings``) every ``ASK_EVERY`` seconds; a worker that has
answered nothing for ``--worker-timeout`` seconds is killed (SIGKILL: a stopped
process takes no other signal) and started again as one that exited. Its sockets'
clients reconnect to the other workers meanwhile (sessions resume).
"""

import socket
import time

from bushub.siblings import ASK_TIMEOUT, READINESS

# How often each worker is asked.
ASK_EVERY = 2.0


def answers(control_path: str) -> bool:
    """Whether the worker listening on ``control_path`` answers a readiness question
    within ``ASK_TIMEOUT`` (what it answers does not matter: it runs)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(ASK_TIMEOUT)
            sock.connect(control_path)
            sock.sendall(READINESS + b"\n")
            return bool(sock.recv(1))
    except OSError:
        return False


class Silence:
    """Since when one worker has answered nothing (``time.monotonic``)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.asked_at = 0.0

    def due(self, now: float) -> bool:
        return now - self.asked_at >= ASK_EVERY

    def heard(self, answered: bool, now: float) -> float:
        """Record an answer (or none); the seconds it has been silent, 0 if not."""
        self.asked_at = now
        if answered:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = now
        return now - self.since

    def reset(self) -> None:
        self.since = None
        self.asked_at = time.monotonic()
