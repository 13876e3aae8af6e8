"""A node's peak memory under fast senders of large messages, Redis up.

Run from the repository root: ``.venv/bin/python bench/fast_sender_memory.py``.

Starts a redis-server and one hub node of their own (rate limits off, so that the
senders go as fast as the node takes them), connects one reading agent and
``--senders`` agents sending it ``--kib`` KiB messages (JSON, a bridged frame's
bytes) as fast as they can for ``--seconds``, and prints how many went and came
and the node's resident memory before and at its peak (sampled every 50 ms). A
node holds what its publisher has handed Redis and not heard back about; this
shows what that and the sockets' buffers come to.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.procs import HubNode, RedisServer
from tests.operations.ops import frame_message


def rss_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
    except FileNotFoundError:
        pass  # the node is gone
    return 0


def read_all(url: str, ready: "multiprocessing.Queue[int]", stop: float) -> None:
    """The reading agent, in a process of its own so that the senders cannot slow
    it down: counts what it gets until ``stop`` (``time.time()``), then reports."""

    async def run() -> int:
        received = 0
        async with connect(f"{url}/ws/sink?peer=src0", max_size=None) as sink:
            ready.put(-1)
            while time.time() < stop:
                try:
                    got = await asyncio.wait_for(sink.recv(), max(0.01, stop - time.time()))
                except TimeoutError:
                    break
                # The senders' messages, not the hub's announcements of them.
                received += "BusFrameMessage" in str(got[:200])
        return received

    ready.put(asyncio.run(run()))


async def load(url: str, pid: int, senders: int, kib: int, seconds: float) -> str:
    peak = [rss_mb(pid)]
    base = peak[0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    # What is on its way has three seconds to arrive after the senders stop.
    reported: multiprocessing.Queue[int] = multiprocessing.Queue()
    reader = multiprocessing.Process(
        target=read_all, args=(url, reported, time.time() + seconds + 3), daemon=True
    )
    reader.start()
    reported.get(timeout=30)  # connected
    sources = [await connect(f"{url}/ws/src{n}?peer=sink") for n in range(senders)]
    # Base64 in JSON: three bytes of audio take four.
    message = frame_message("src", 0, b"\0" * (kib * 768))
    sent = 0
    ended: list[str] = []
    until = time.monotonic() + seconds

    async def pump(n: int, socket: ClientConnection) -> None:
        nonlocal sent
        text = json.dumps({**message, "__data__": {**message["__data__"], "target": "sink"}})
        text = text.replace('"source": "src"', f'"source": "src{n}"')
        try:
            while time.monotonic() < until:
                await socket.send(text)
                sent += 1
        except ConnectionClosed as closed:
            # The reader fell behind by --queue-bytes (4008), and its peer was told.
            ended.append(f"src{n} closed {closed.rcvd.code if closed.rcvd else None}")

    await asyncio.gather(*(pump(n, s) for n, s in enumerate(sources)))
    received = await asyncio.to_thread(reported.get, True, 60)
    sampling.set()
    reader.join()
    for socket in sources:
        await socket.close()
    outcome = f"sent {sent}, received {received}; node RSS {base} MB before, peak {peak[0]} MB"
    return "; ".join([outcome, *ended])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--kib", type=int, default=64, help="message size, KiB")
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    os.environ.update(BUSHUB_RATE_MESSAGES="0", BUSHUB_RATE_BYTES="0")
    logs = Path(tempfile.mkdtemp(prefix="bushub-fast-sender-"))
    redis_server = RedisServer(logs / "redis.log")
    redis_server.start()
    node = HubNode("n1", logs / "hub.log", redis_server.url)
    try:
        node.start()
        print(asyncio.run(load(node.url, node.pid, args.senders, args.kib, args.seconds)))
    finally:
        node.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
