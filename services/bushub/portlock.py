"""One ``--workers`` node per address: a lock the kernel lets go of however its holder ends.

A ``--workers`` node's workers share their port with SO_REUSEPORT, which the kernel
grants to every socket of the same user that asks for it: a second such node started
on the same address would bind it too, and the kernel would split new connections
(and scrapes) between two nodes that know nothing of each other. The supervisor
therefore holds a unix socket in the abstract namespace named after the address it
serves; a second supervisor cannot bind the same name. Nothing is left on disk, and
the name is free again the moment its holder exits, by a signal or SIGKILL alike.
Abstract names, like ports, belong to the network namespace.
"""

import socket


class AddressTaken(OSError):
    """Another ``--workers`` node serves the address."""


def lock_name(host: str, port: int) -> bytes:
    """The abstract socket name standing for ``host:port``."""
    return b"\0bushub-serve/%s:%d" % (host.encode(), port)


def hold(host: str, port: int) -> socket.socket:
    """Take the lock for ``host:port`` (the address as bound: port 0 already resolved);
    held until the returned socket is closed or the process ends.

    Raises:
        AddressTaken: another node holds it.
    """
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(lock_name(host, port))
    except OSError as exc:
        lock.close()
        raise AddressTaken(f"another bushub node with --workers serves it ({exc})") from exc
    return lock
