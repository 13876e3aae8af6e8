"""The hub's own work per relayed message, by payload and format, without any I/O.

Not a test: it prints a Markdown table, to be read, never asserted on. Run from the
repository root:

    .venv/bin/python bench/hub_path.py [--repeat 31] [--iterations 20000]

One message is relayed the way two nodes would: ``Relay.route`` on the publishing
node (envelope decode, checks, relay frame) and ``Relay.deliver`` on the delivering
node (relay frame split, same-format pass-through, the frame handed to a socket
that takes it at once). The publisher and the socket are stand-ins that only keep
what they are given; everything between is the hub's real code. Formats alternate
run by run, and each cell is the median of ``--repeat`` runs' CPU time per message
(``time.process_time``), so the noise of a shared machine falls on both alike.
"""

import time
import warnings

from busbench.inmemory import TakingSocket, memory_connection
from busbench.pathbench import alternated, main

from bushub.claims import ClaimFence
from bushub.connection import Connection
from bushub.metrics import Metrics
from bushub.outbound import Outbound
from bushub.relay import Relay
from bushub.settings import Settings
from buswire import Format

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from busbench.payloads import Builder


class _Case:
    """One payload in one format, with a relay wired to carry it in memory."""

    def __init__(self, builder: Builder, payload: str, fmt: str) -> None:
        request, _ = builder.pairs(payload, fmt, "a_1", "b_1")[0]
        self.data = request.fill(42)
        settings = Settings(node_id="bench", rate_messages=0, rate_bytes=0)
        metrics = Metrics()
        self.published: list[bytes] = []
        self.holders: dict[str, Connection] = {}
        claims = ClaimFence()
        self.relay = Relay(
            settings,
            metrics,
            self.holders,
            claims,
            lambda channel, data: self.published.append(data),
            Outbound(metrics),
        )
        self.sender = memory_connection("a_1", "b_1", Format(fmt))
        receiver = memory_connection("b_1", "a_1", Format(fmt))
        receiver.outlet = TakingSocket()
        self.holders["b_1"] = receiver
        claims.seen("b_1", receiver.id)
        self.relay.route(self.sender, self.data)
        self.frame = self.published[0]

    def run(self, iterations: int) -> float:
        """CPU µs per message over ``iterations`` relays."""
        route, deliver, sender, data, frame = (
            self.relay.route,
            self.relay.deliver,
            self.sender,
            self.data,
            self.frame,
        )
        start = time.process_time()
        for _ in range(iterations):
            route(sender, data)
            deliver("b_1", frame)
        elapsed = time.process_time() - start
        self.published.clear()
        return elapsed / iterations * 1e6


async def _main(repeat: int, iterations: int) -> None:
    builder = Builder()
    payloads = ("task", "audio")
    cases = {(p, f): _Case(builder, p, f) for p in payloads for f in ("json", "msgpack")}
    medians = alternated({key: case.run for key, case in cases.items()}, repeat, iterations)
    print("| payload | JSON µs/msg | MsgPack µs/msg | MsgPack / JSON |")
    print("| --- | ---: | ---: | ---: |")
    for payload in payloads:
        json_us = medians[(payload, "json")]
        msgpack_us = medians[(payload, "msgpack")]
        print(f"| {payload} | {json_us:.2f} | {msgpack_us:.2f} | {msgpack_us / json_us:.2f}x |")


if __name__ == "__main__":
    main(__doc__, _main)
