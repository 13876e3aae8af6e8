"""How a node's process collects cyclic garbage: rarely, and never its start-up objects.

CPython runs a collection of its youngest generation whenever container allocations
outnumber deallocations by 700, and every tenth of those scans the next generation
too. A node holds tens of tracked objects per socket (its connection, protocol, tasks
and state) and makes new ones with every handshake, so at the default it collected
every few handshakes, re-scanning the objects of the sockets just opened each time
before they settled into the oldest generation. Relayed messages leave little behind
(their objects die by reference count), but what they do leave set off collections in
the middle of a burst.

Measured (``bench/open_close.py --sockets 3000``, alternated on one machine, node CPU
per socket opened): 450-510 µs at CPython's thresholds, 400-430 µs at these; and
``bushub-bench --resume-only``: hub CPU per relayed message 8 % lower and the p99
0.2 ms lower in every variant (BENCHMARKS.md, "Handshakes and collections").

The young generation may now hold up to ``GEN0_THRESHOLD`` objects before a
collection, a few MB at most; objects that only a cycle keeps alive live that much
longer. The oldest generation is still collected by CPython's own rule (when what
was promoted since the last full collection reaches a quarter of it), so a node that
grows to 100,000 sockets pays a full scan a handful of times on the way, not per
socket.

``gc.freeze()`` moves everything alive once the node is built (imported modules,
the app, its settings) into a generation that collections never scan: they are
there for the life of the process.
"""

import gc

GEN0_THRESHOLD = 20_000
GEN1_THRESHOLD = 20
GEN2_THRESHOLD = 20


def apply() -> None:
    """Set the node's thresholds and freeze what exists now; call once the app is built,
    just before serving."""
    gc.collect()  # what start-up left unreachable is not worth keeping forever
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
