"""Warn before the process runs out of file descriptors.

At RLIMIT_NOFILE every accept fails with EMFILE: the node answers neither new
handshakes nor ``/healthz``, and the event loop says nothing about it. Each socket
is a descriptor, so the count is checked as connections are accepted (at most once
a second: listing the descriptors of a busy node costs a few milliseconds), and a
WARNING is logged from ``WARN_RATIO`` of the soft limit on. The gauges are read at
scrape time.
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
    """Checks descriptor use against the limit, at most once per ``interval``."""

    def __init__(self, metrics: Metrics, interval: float = CHECK_INTERVAL) -> None:
        self._interval = interval
        self._next_check = 0.0
        metrics.open_fds.set_function(lambda: open_fds() or 0)
        metrics.fd_limit.set_function(lambda: fd_limit() or 0)

    def accepted(self) -> None:
        """A connection was accepted: check, unless checked within the interval."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._interval
        used, limit = open_fds(), fd_limit()
        if used is not None and limit is not None and used >= WARN_RATIO * limit:
            # Rate-limited by bushub.logs like every repeated warning.
            log.warning(
                "%d of %d file descriptors open: at the limit new connections and "
                "/healthz go unanswered (raise ulimit -n, or add nodes)",
                used,
                limit,
            )
