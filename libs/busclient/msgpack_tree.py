"""MsgPack encoding of the libraries' tagged message tree, independent of either.

The tree is exactly the one the JSON serializer builds (``__type__``/``__data__``
wrappers, adapters, enums, nested dataclasses), with two differences: bytes stay
native MsgPack ``bin`` instead of tagged base64, and the encoding is MsgPack. Map
keys are turned into strings the way ``json.dumps`` does, so a message decodes to
the same value through either serializer.
"""

import json
from typing import Any

import msgpack


def json_key(key: Any) -> str:
    """The string ``json.dumps`` would write for a map key."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None or isinstance(key, int | float):
        return json.dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def string_keys(value: Any) -> Any:
    """Turn every map key of a plain tree into the string ``json.dumps`` would write."""
    if isinstance(value, dict):
        return {json_key(k): string_keys(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [string_keys(v) for v in value]
    return value


class MsgPackTreeMixin:
    """Mix in before a library's ``JSONMessageSerializer`` to speak MsgPack.

    The library's recursive ``_serialize_value``/``_deserialize_value`` call back
    into ``self``, so overriding the two cases that differ (bytes and map keys) is
    enough: every adapter and nested type goes through the library's own code.
    """

    def _serialize_value(self, value: Any) -> Any:
        if isinstance(value, bytes):
            return value
        if isinstance(value, dict):
            return {json_key(k): self._serialize_value(v) for k, v in value.items()}
        serialized = super()._serialize_value(value)  # type: ignore[misc]
        # Adapters (tools schemas) may return plain trees without calling back into
        # us, so their keys get JSON's treatment here.
        if isinstance(serialized, dict) and self._find_adapter(type(value)) is not None:  # type: ignore[attr-defined]
            serialized["__data__"] = string_keys(serialized["__data__"])
        return serialized

    def _deserialize_value(self, value: Any) -> Any:
        if isinstance(value, bytes):
            return value
        return super()._deserialize_value(value)  # type: ignore[misc]

    def serialize(self, message: Any) -> bytes:
        """Encode a bus message as MsgPack."""
        packed: bytes = msgpack.packb(self._serialize_value(message), use_bin_type=True)
        return packed

    def deserialize(self, data: bytes) -> Any:
        """Decode a MsgPack bus message; None if it names no importable type."""
        return self._deserialize_value(msgpack.unpackb(data, raw=False))
