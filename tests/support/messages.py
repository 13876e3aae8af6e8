"""Bus messages as the test clients write them, and their JSON and MsgPack forms.

`task_request` is the one message every suite sends: a subagents task request whose
payload carries a sequence number. The suites differ only in what they vary, so the
variations are parameters: how the task is named, filler, other payload or fields, or
the exact tree the library's own serializer writes.
"""

import base64
import json
from functools import cache
from typing import Any

import msgpack

SUBAGENTS = "pipecat_subagents.bus.messages."
TASK_REQUEST = SUBAGENTS + "BusTaskRequestMessage"


def task_request(
    source: str,
    target: str | None,
    seq: int = 0,
    *,
    task_id: str = "t{seq}",
    payload: Any = None,
    pad: int | str = 0,
    library: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """A subagents task request tree from ``source`` to ``target``.

    Args:
        target: None omits the key, as the library does for an untargeted message.
        seq: Carried as ``payload.seq`` (and in the default task id).
        task_id: The task id, formatted with ``source`` and ``seq``.
        payload: The payload instead of ``{"seq": seq}``.
        pad: Filler in the payload (``payload.pad``): that many bytes of ``x``, or
            this text (random text, where compression must not shrink it).
        library: Build a real ``BusTaskRequestMessage`` (task name ``echo``) and
            return the tree the library's JSON serializer writes for it, with the
            fields the library adds (``id``, ``name``, ``metadata``...).
        fields: More keys of ``__data__``, set last.
    """
    body: Any = {"seq": seq} if payload is None else payload
    name = task_id.format(source=source, seq=seq)
    if library:
        tree = _library_tree(source, target, name, body)
        data = tree["__data__"]
    else:
        data = {"source": source, "task_id": name, "payload": body}
        if target is not None:
            data["target"] = target
        tree = {"__type__": TASK_REQUEST, "__data__": data}
    if pad:
        data["payload"]["pad"] = pad if isinstance(pad, str) else "x" * pad
    data.update(fields)
    return tree


def _library_tree(source: str, target: str | None, task_id: str, payload: Any) -> dict[str, Any]:
    from pipecat_subagents.bus import BusTaskRequestMessage

    message = BusTaskRequestMessage(
        source=source, target=target, task_id=task_id, task_name="echo", payload=payload
    )
    tree: dict[str, Any] = json.loads(_serializer().serialize(message))
    return tree


@cache
def _serializer() -> Any:
    from pipecat_subagents.bus.serializers import JSONMessageSerializer

    return JSONMessageSerializer()


def encode(tree: Any, fmt: str = "json") -> bytes:
    """``tree`` as compact JSON, or as MsgPack (``fmt="msgpack"``) as it stands."""
    if fmt == "msgpack":
        packed: bytes = msgpack.packb(tree, use_bin_type=True)
        return packed
    return json.dumps(tree, separators=(",", ":")).encode()


def decode(frame: bytes | str) -> Any:
    """A frame from the hub, JSON or MsgPack."""
    if isinstance(frame, str) or frame[:1] == b"{":
        return json.loads(frame)
    return msgpack.unpackb(frame, raw=False)


def native_bytes(tree: Any) -> Any:
    """JSON's tagged base64 bytes turned into native bytes: the MsgPack tree."""
    if isinstance(tree, dict):
        if tree.get("__type__") == "bytes" and set(tree) == {"__type__", "__data__"}:
            return base64.b64decode(tree["__data__"])
        return {k: native_bytes(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [native_bytes(v) for v in tree]
    return tree


def tagged_bytes(tree: Any) -> Any:
    """Native bytes turned into JSON's tagged base64: the JSON tree."""
    if isinstance(tree, bytes):
        return {"__type__": "bytes", "__data__": base64.b64encode(tree).decode()}
    if isinstance(tree, dict):
        return {k: tagged_bytes(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [tagged_bytes(v) for v in tree]
    return tree
