"""Envelope decoding and translation for the JSON and MsgPack encodings.

The tagged tree is the same in both: ``{"__type__": "<module>.<Class>", "__data__":
{...}}``. JSON carries bytes as ``{"__type__": "bytes", "__data__": "<base64>"}``;
MsgPack carries them as native ``bin``. Routing reads only the envelope; a relay
between two connections of the same format never re-encodes.
"""

import base64
import binascii
import json
import math
from typing import Any

import msgpack
import orjson

from buswire.dialect import dialect_of
from buswire.envelope import Envelope
from buswire.errors import DecodeError
from buswire.formats import Format

BYTES_TAG = "bytes"
_JSON_WHITESPACE = b" \t\r\n"
_MSGPACK_MAP_MARKERS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
# Deeper trees are refused when translating: msgpack packs at most 511 levels and
# Python's recursion limit must never be the one to say no.
MAX_DEPTH = 256


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


def load_tree(data: bytes, fmt: Format) -> Any:
    """Parse a frame into its tagged tree.

    Raises:
        DecodeError: ``malformed`` when the bytes are not valid in ``fmt``.
    """
    try:
        if fmt is Format.JSON:
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                # The library writes with json.dumps, which may emit NaN, Infinity
                # and integers past 64 bits; orjson refuses those, json does not.
                return json.loads(data)
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        # JSONDecodeError, UnicodeDecodeError and msgpack's ExtraData/FormatError
        # are ValueErrors.
        raise DecodeError("malformed", type(exc).__name__) from None


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
        raise DecodeError("not_a_message", "top level is not a map")
    type_name = tree.get("__type__")
    data = tree.get("__data__")
    if not isinstance(type_name, str) or not type_name or not isinstance(data, dict):
        raise DecodeError("not_a_message", "no __type__/__data__")
    if "." not in type_name:
        raise DecodeError("bad_type", "type is not qualified")
    source = data.get("source")
    if not isinstance(source, str) or not source:
        raise DecodeError("bad_source")
    target = data.get("target")
    if target is not None and (not isinstance(target, str) or not target):
        raise DecodeError("bad_target")
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
        raise DecodeError("malformed", "nested too deep")


def _json_to_native(value: Any, depth: int = 0) -> Any:
    """Turn JSON's tagged base64 bytes into native bytes, recursively."""
    _check_depth(depth)
    if isinstance(value, dict):
        if value.get("__type__") == BYTES_TAG and len(value) == 2:
            encoded = value.get("__data__")
            if not isinstance(encoded, str):
                raise DecodeError("malformed", "bytes payload is not a string")
            try:
                return base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise DecodeError("malformed", "bad base64") from None
        return {k: _json_to_native(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_to_native(v, depth + 1) for v in value]
    return value


def _native_to_json(value: Any, depth: int = 0) -> Any:
    """Turn native bytes into JSON's tagged base64 form, recursively."""
    _check_depth(depth)
    if isinstance(value, bytes):
        return {"__type__": BYTES_TAG, "__data__": base64.b64encode(value).decode("ascii")}
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

    Same-format input is returned as is: the relay never re-encodes it.

    Raises:
        DecodeError: ``malformed`` when ``data`` is not valid in ``src``.
    """
    if src is dst:
        return data
    try:
        # Python's json keeps integers past 64 bits exact (orjson makes them
        # floats), so a number that MsgPack cannot hold fails here, loudly.
        tree = json.loads(data) if src is Format.JSON else load_tree(data, src)
        return dump_tree(convert_tree(tree, src, dst), dst)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise DecodeError("malformed", type(exc).__name__) from None


def encode_tree(tree: Any, fmt: Format) -> bytes:
    """Encode a tree written in JSON's convention (bytes tagged) into ``fmt``."""
    return dump_tree(convert_tree(tree, Format.JSON, fmt), fmt)
