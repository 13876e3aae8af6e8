"""Envelope decoding and translation for the JSON and MsgPack encodings.

The tagged tree is the same in both: ``{"__type__": "<module>.<Class>", "__data__":
{...}}``. JSON carries bytes as ``{"__type__": "bytes", "__data__": "<base64>"}``;
MsgPack carries them as native ``bin``. Routing reads only the envelope; a relay
between two connections of the same format never re-encodes.
"""

import base64
import binascii
import gc
import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import orjson

from buswire.complexity import MAX_DEPTH, too_deep, too_many
from buswire.dialect import dialect_of
from buswire.envelope import Envelope
from buswire.errors import DecodeError
from buswire.formats import Format
from buswire.reasons import DropReason

_T = TypeVar("_T")

BYTES_TAG = "bytes"
_JSON_WHITESPACE = b" \t\r\n"
_MSGPACK_MAP_MARKERS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
# Every byte but the first bytes of MsgPack maps and arrays (fix, 16- and 32-bit).
_NOT_MSGPACK_CONTAINER_MARKERS = bytes(
    b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF)
)
# Frames at least this big are parsed with the garbage collector paused. A parsed
# tree holds no cycles, so there is nothing for it to find, but a frame of many
# small lists sets off collections that promote them and, in turn, full passes over
# the node's whole heap: with 300,000 live objects a 4 KB frame of empty MsgPack
# arrays took 430 µs/KB to parse and refuse, 57 with the pause (bench/frame_cost.py).
# Under 1 KB the pause (50 ns) would cost more than it saves.
GC_PAUSE_BYTES = 1 << 10
# MsgPack frames at least this big are counted while parsed when they may be too
# complex (see load_tree). Below it the check itself (half a nanosecond a byte)
# would add a tenth to an ordinary audio frame's cost, and parsing a refused frame
# whole costs at most a millisecond.
COUNT_WHILE_PARSING_BYTES = 16 << 10
# A MsgPack float32/float64 whose exponent bits are all ones: NaN or an infinity.
# JSON output is written by orjson, which turns those into null; a frame that may
# hold one goes through json, which keeps them as the library writes them. A match
# inside a string, a key or bytes (about 1 % of 640-byte audio chunks) is confirmed
# on the parsed tree first, so only a frame that holds one takes the other encoder
# (whose bytes differ: it escapes what orjson writes as is).
_MSGPACK_NON_FINITE = re.compile(rb"\xca[\x7f\xff][\x80-\xff]|\xcb[\x7f\xff][\xf0-\xff]")


def sniff_format(data: bytes) -> Format | None:
    """Guess the encoding of a frame from its first byte, or None if neither fits.

    A JSON message opens with ``{``; a MsgPack message opens with a map marker.
    The two sets do not overlap (``{`` is a MsgPack positive fixint).
    """
    stripped = data.lstrip(_JSON_WHITESPACE)
    if not stripped:
        return None
    first = stripped[0]
    if first == 0x7B:
        return Format.JSON
    if first in _MSGPACK_MAP_MARKERS:
        return Format.MSGPACK
    return None


def load_tree(data: bytes, fmt: Format, max_containers: int | None = None) -> Any:
    """Parse a frame into its tagged tree.

    Args:
        data: The frame as received.
        fmt: The encoding it is in.
        max_containers: When given, a MsgPack frame of ``COUNT_WHILE_PARSING_BYTES``
            or more that may hold more maps and lists than this is counted while parsed,
            and refused as soon as it has (parsing a million empty arrays to count
            them afterwards costs several times an ordinary frame per byte). Other
            frames are counted by the type walk (``TypePolicy.check``), which
            every frame relayed goes through.

    Raises:
        DecodeError: ``too_complex`` when nesting is deeper than the parsers go or
            there are more than ``max_containers`` maps and lists; ``malformed``
            when the bytes are not valid in ``fmt``.
    """
    if len(data) < GC_PAUSE_BYTES:
        return _load(data, fmt)
    return _load_big(data, fmt, max_containers)


def _load_big(data: bytes, fmt: Format, max_containers: int | None) -> Any:
    hook = None
    if (
        max_containers is not None
        and fmt is Format.MSGPACK
        and len(data) >= COUNT_WHILE_PARSING_BYTES
        # Every map and list starts with one of these bytes, so no more of them
        # means no more containers; strings and bytes may hold them too, and
        # those frames are counted exactly.
        and len(data.translate(None, _NOT_MSGPACK_CONTAINER_MARKERS)) > max_containers
    ):
        hook = _counter(max_containers)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(data, fmt, hook)
    finally:
        if enabled:
            gc.enable()


def _counter(max_containers: int) -> Callable[[_T], _T]:
    """An unpacker hook that refuses the frame past ``max_containers`` containers."""
    left = max_containers

    def count(container: _T) -> _T:
        nonlocal left
        left -= 1
        if left < 0:
            raise too_many()
        return container

    return count


def _load(data: bytes, fmt: Format, hook: Callable[[Any], Any] | None = None) -> Any:
    try:
        if fmt is Format.JSON:
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                # The library writes with json.dumps, which may emit NaN, Infinity
                # and integers past 64 bits; orjson refuses those, json does not.
                return json.loads(data)
        if hook is not None:
            return msgpack.unpackb(
                data, raw=False, strict_map_key=True, object_hook=hook, list_hook=hook
            )
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (RecursionError, msgpack.StackError):
        # Valid, but nested past what the parser takes (orjson 1,024 levels, then
        # json its recursion limit; msgpack 1,024).
        raise too_deep() from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # JSONDecodeError, UnicodeDecodeError and msgpack's ExtraData/FormatError
        # are ValueErrors.
        raise DecodeError(DropReason.MALFORMED, type(exc).__name__) from None


def dump_tree(tree: Any, fmt: Format) -> bytes:
    """Encode a tagged tree that is already in ``fmt``'s bytes convention.

    JSON keeps what the library's own ``json.dumps`` would write: orjson turns
    NaN into null and refuses integers past 64 bits, so those trees go through
    ``json`` instead.
    """
    if fmt is Format.JSON:
        if not _has_non_finite(tree):
            try:
                return orjson.dumps(tree)
            except TypeError:
                pass
        return json.dumps(tree, separators=(",", ":")).encode()
    packed: bytes = msgpack.packb(tree, use_bin_type=True)
    return packed


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def envelope_of(tree: Any) -> Envelope:
    """Check a parsed tree's top level and pull out what routing needs.

    Raises:
        DecodeError: with the reason naming the first rule broken.
    """
    if not isinstance(tree, dict):
        raise DecodeError(DropReason.NOT_A_MESSAGE, "top level is not a map")
    type_name = tree.get("__type__")
    data = tree.get("__data__")
    if not isinstance(type_name, str) or not type_name or not isinstance(data, dict):
        raise DecodeError(DropReason.NOT_A_MESSAGE, "no __type__/__data__")
    if "." not in type_name:
        raise DecodeError(DropReason.BAD_TYPE, "type is not qualified")
    source = data.get("source")
    if not isinstance(source, str) or not source:
        raise DecodeError(DropReason.BAD_SOURCE)
    target = data.get("target")
    if target is not None and (not isinstance(target, str) or not target):
        raise DecodeError(DropReason.BAD_TARGET)
    return Envelope(
        type_name=type_name, source=source, target=target, dialect=dialect_of(type_name)
    )


def decode_envelope(data: bytes, fmt: Format) -> Envelope:
    """Decode the envelope of one frame.

    Args:
        data: The frame as received.
        fmt: The encoding the frame is in.

    Raises:
        DecodeError: the frame cannot be routed; ``reason`` says why.
    """
    return envelope_of(load_tree(data, fmt))


def _check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise too_deep()


def _json_to_native(value: Any, depth: int = 0) -> Any:
    """Turn JSON's tagged base64 bytes into native bytes, recursively."""
    _check_depth(depth)
    if isinstance(value, dict):
        native = _untag_bytes(value)
        if native is not value:
            return native
        return {k: _json_to_native(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_to_native(v, depth + 1) for v in value]
    return value


def _native_to_json(value: Any, depth: int = 0) -> Any:
    """Turn native bytes into JSON's tagged base64 form, recursively."""
    _check_depth(depth)
    if isinstance(value, bytes):
        return _tag_bytes(value)
    if isinstance(value, dict):
        return {k: _native_to_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_native_to_json(v, depth + 1) for v in value]
    return value


def convert_tree(tree: Any, src: Format, dst: Format) -> Any:
    """Rewrite a tree's bytes convention from ``src`` to ``dst``."""
    if src is dst:
        return tree
    if dst is Format.MSGPACK:
        return _json_to_native(tree)
    return _native_to_json(tree)


def translate(data: bytes, src: Format, dst: Format) -> bytes:
    """Re-encode a frame from one format to the other.

    Same-format input is returned as is: the relay never re-encodes it. The
    parsers and encoders do the work in C; Python sees only maps (JSON to MsgPack)
    or bytes values (MsgPack to JSON), never every scalar: the hub bounds maps and
    lists per byte on receipt, and lists of numbers are legitimate payloads.

    Raises:
        DecodeError: ``malformed`` when ``data`` is not valid in ``src`` or cannot
            be written in ``dst``; ``too_complex`` when nested past the parsers.
    """
    if src is dst:
        return data
    if len(data) < GC_PAUSE_BYTES:
        return _translate(data, src)
    enabled = gc.isenabled()
    gc.disable()  # as load_tree does, for the same reason
    try:
        return _translate(data, src)
    finally:
        if enabled:
            gc.enable()


def _translate(data: bytes, src: Format) -> bytes:
    try:
        if src is Format.JSON:
            # Python's json keeps integers past 64 bits exact (orjson makes them
            # floats), so a number that MsgPack cannot hold fails here, loudly.
            native = json.loads(data, object_hook=_untag_bytes)
            packed: bytes = msgpack.packb(native, use_bin_type=True)
            return packed
        tree = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext)
        if _MSGPACK_NON_FINITE.search(data) is None or not _has_non_finite(tree):
            try:
                return orjson.dumps(tree, default=_tag_bytes)
            except TypeError:
                pass  # nested past orjson's 254 levels, or not JSON at all
        return json.dumps(tree, separators=(",", ":"), default=_tag_bytes).encode()
    except (RecursionError, msgpack.StackError):
        raise too_deep() from None
    except (TypeError, ValueError, OverflowError, msgpack.UnpackException) as exc:
        raise DecodeError(DropReason.MALFORMED, type(exc).__name__) from None


def _no_ext(code: int, data: bytes) -> Any:
    # JSON has no extension types (the json encoder would write one as a list).
    raise TypeError(f"MsgPack extension type {code}")


def _untag_bytes(value: dict[str, Any]) -> Any:
    """json's object hook: a JSON bytes wrapper becomes native bytes."""
    if len(value) == 2 and value.get("__type__") == BYTES_TAG:
        encoded = value.get("__data__")
        if not isinstance(encoded, str):
            raise DecodeError(DropReason.MALFORMED, "bytes payload is not a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError(DropReason.MALFORMED, "bad base64") from None
    return value


def _tag_bytes(value: Any) -> Any:
    """The encoders' default: native bytes become the JSON bytes wrapper."""
    if isinstance(value, bytes):
        return {"__type__": BYTES_TAG, "__data__": base64.b64encode(value).decode("ascii")}
    raise TypeError(type(value).__name__)


def encode_tree(tree: Any, fmt: Format) -> bytes:
    """Encode a tree written in JSON's convention (bytes tagged) into ``fmt``."""
    return dump_tree(convert_tree(tree, Format.JSON, fmt), fmt)
