"""Warn before the process runs out of file descriptors.

At RLIMIT_NOFILE every accept fails: the node answers neither new handshakes nor
``/healthz``, and the event loop says nothing about it. The kernel gives each new
descriptor the lowest free number, so an accepted socket numbered ``n`` means
descriptors 0 to n-1 are all in use: one comparison per accept tells when the
process passes ``WARN_RATIO`` of its soft limit, and only then are descriptors
counted (at most once per ``interval``: listing them costs milliseconds on a busy
node) for a WARNING. The gauges are read at scrape time.
"""

import logging
import os
import resource
import time

from bushub.metrics import Metrics

log = logging.getLogger(__name__)

WARN_RATIO = 0.9
CHECK_INTERVAL = 1.0
# Where the process's descriptors are listed: Linux, then the BSDs and macOS.
_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def open_fds() -> int | None:
    """Descriptors open in this process, or None where they cannot be listed."""
    for folder in _FD_DIRS:
        try:
            # The listing's own descriptor is in the listing.
            return len(os.listdir(folder)) - 1
        except OSError:
            continue
    return None


def fd_limit() -> int | None:
    """The soft limit on open descriptors, or None when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class FdWatch:
    """Warns when accepted sockets show descriptors near the limit."""

    def __init__(self, metrics: Metrics, interval: float = CHECK_INTERVAL) -> None:
        self._interval = interval
        self._next_warning = 0.0
        metrics.open_fds.set_function(lambda: open_fds() or 0)
        metrics.fd_limit.set_function(lambda: fd_limit() or 0)

    def accepted(self, fd: int) -> None:
        """A socket numbered ``fd`` was accepted."""
        # Read each time (one cheap system call): the limit can change at run time.
        limit = fd_limit()
        if limit is None or fd < WARN_RATIO * limit:
            return
        now = time.monotonic()
        if now < self._next_warning:
            return
        self._next_warning = now + self._interval
        # Rate-limited further by bushub.logs, like every repeated warning.
        log.warning(
            "%s of %d file descriptors open: at the limit new connections and /healthz "
            "go unanswered (raise ulimit -n, or add nodes)",
            open_fds() or f">{fd}",
            limit,
        )


# Descriptors a node needs beside its sockets: the listening socket, Redis
# connections (a pool of up to 64, plus per-shard ones), logs, the event loop's own.
RESERVED_FDS = 256


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft descriptor limit as far as the hard limit allows, for
    ``max_connections`` sockets; say at start-up when even that is too low.

    A node at its limit answers nothing, so this is checked before serving rather
    than found out under load.
    """
    wanted = max_connections + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            log.info("file descriptor limit raised from %d to %d", soft, ceiling)
            soft = ceiling
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "--max-connections %d needs about %d file descriptors, but the limit is %d "
            "(hard limit %s): at most about %d sockets will be taken; raise the hard "
            "limit (ulimit -Hn, systemd LimitNOFILE, docker --ulimit nofile)",
            max_connections,
            wanted,
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            max(0, soft - RESERVED_FDS),
        )
