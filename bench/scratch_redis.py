"""A redis-server of a bench script's own, on a free loopback port, for Redis'
``INFO commandstats`` to count only what the script sends it."""

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.support.ports import free_port


@contextmanager
def scratch_redis() -> Iterator[redis.Redis]:
    """A client of a new redis-server that keeps nothing on disk; stopped on exit."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        yield client
    finally:
        server.terminate()
        server.wait()
