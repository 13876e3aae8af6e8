"""How a node's process collects cyclic garbage: rarely, and never its start-up objects.

CPython runs a collection of its youngest generation whenever container allocations
outnumber deallocations by 700, and every tenth of those scans the next generation
too. A node holds tens of tracked objects per socket (its connection, protocol, callbacks
and state) and makes new ones with every handshake, so at the default it collected
every few handshakes, re-scanning the objects of the sockets just opened each time
before they settled into the oldest generation. Relayed messages leave little behind
(their objects die by reference count), but what they do leave set off collections in
the middle of a burst.

Measured (BENCHMARKS.md, "Collections, and the 20,000 storm within 10 s"): node CPU
per socket opened 450-510 µs at CPython's thresholds, 400-430 µs at these
(``bench/open_close.py --sockets 3000``); in a 20,000-socket reconnect storm the two
survivors spent ~40 % less CPU and the storm ended seconds sooner; relaying and idle
sockets cost the same within the spread between runs.

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
