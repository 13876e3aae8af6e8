"""How much structure a frame may carry for its size.

Parsing is C (orjson, msgpack), close to a nanosecond per byte of strings and bytes,
but every map and list then costs the node Python work: the type walk on receipt,
the garbage collector, the translation on delivery, a few hundred nanoseconds each.
A 1 MB MsgPack frame of 1,000,000 empty arrays cost a node 0.65 s to receive and
1.65 s to translate. So a frame may hold at most ``BASE_CONTAINERS`` maps and lists
plus one per ``bytes_per_container`` bytes of its size, nested at most ``MAX_DEPTH``
levels below its top map; more is dropped as ``too_complex``. Ordinary messages carry
one container per 50 bytes or more (a task request: 4 in 250 bytes; 20 ms of audio:
5 in 1 KB). Scalars are not counted: every stage handles them in C.

MsgPack writes a message in about half the bytes JSON does (a map or list head in one
byte where JSON takes two, no quotes, commas or colons), so a MsgPack frame counts
``MSGPACK_WEIGHT`` times its size: the same message has the same budget whichever
format it came in. Counted by its own size, a message JSON passed was refused from
MsgPack (300 small maps in a list, a dict nested 240 deep).
"""

from buswire.errors import DecodeError
from buswire.reasons import DropReason

# Below the top map; orjson parses 1024 levels and writes 254, Python's json about
# 1,000 (its recursion limit): nothing a client sends gets near this legitimately.
MAX_DEPTH = 256
# Room for the envelope and an ordinary payload, whatever the frame's size.
BASE_CONTAINERS = 64
DEFAULT_BYTES_PER_CONTAINER = 8
MSGPACK_WEIGHT = 2


def container_budget(
    size: int, bytes_per_container: int = DEFAULT_BYTES_PER_CONTAINER, *, msgpack: bool = False
) -> int:
    """The most maps and lists a frame of ``size`` bytes may hold, its top map included
    (``msgpack``: a MsgPack frame's, counted as the JSON it would be)."""
    weighted = size * MSGPACK_WEIGHT if msgpack else size
    return BASE_CONTAINERS + weighted // bytes_per_container


def too_deep() -> DecodeError:
    """The error for a tree nested deeper than ``MAX_DEPTH``."""
    return DecodeError(DropReason.TOO_COMPLEX, f"nested deeper than {MAX_DEPTH}")


def too_many() -> DecodeError:
    """The error for a tree with more maps and lists than its size allows."""
    return DecodeError(DropReason.TOO_COMPLEX, "too many maps and lists for its size")
