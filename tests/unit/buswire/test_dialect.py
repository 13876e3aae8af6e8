"""Tests for buswire.dialect: telling the dialects apart and speaking registry messages.

The registry message is the one message the hub writes itself, so it is checked
byte for byte and then handed to each library's real serializer.
"""

import dataclasses
import inspect
from typing import Any

import msgpack
import orjson
import pytest

from buswire.codec import decode_envelope, encode_tree, translate
from buswire.dialect import (
    PIPECAT_REGISTRY_TYPE,
    SUBAGENTS_REGISTRY_TYPE,
    Dialect,
    dialect_of,
    is_registry_type,
    registry_message,
)
from buswire.envelope import Envelope
from buswire.formats import Format


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def library_message_classes(module: Any) -> list[type]:
    base = module.BusMessage
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, base) and cls.__module__ == module.__name__
    ]


# --- dialect_of -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "expected"),
    [
        ("pipecat_subagents.bus.messages.BusTaskRequestMessage", Dialect.SUBAGENTS),
        ("pipecat_subagents.types.AgentRegistryEntry", Dialect.SUBAGENTS),
        ("pipecat_subagents.X", Dialect.SUBAGENTS),
        ("pipecat.bus.messages.BusJobRequestMessage", Dialect.PIPECAT),
        ("pipecat.frames.frames.OutputAudioRawFrame", Dialect.PIPECAT),
        ("pipecat.X", Dialect.PIPECAT),
        ("pipecat", None),
        ("pipecat_subagents", None),
        ("pipecatx.bus.Message", None),
        ("pipecat_subagentsx.bus.Message", None),
        ("Pipecat.bus.Message", None),
        ("myapp.pipecat.Message", None),
        ("bytes", None),
        ("", None),
    ],
)
def test_dialect_of(type_name: str, expected: Dialect | None) -> None:
    assert dialect_of(type_name) is expected


def test_every_subagents_message_class_is_subagents() -> None:
    import pipecat_subagents.bus.messages as messages

    classes = library_message_classes(messages)
    assert len(classes) > 20
    for cls in classes:
        assert dialect_of(qualified(cls)) is Dialect.SUBAGENTS, cls


def test_every_pipecat_message_class_is_pipecat() -> None:
    import pipecat.bus.messages as messages

    classes = library_message_classes(messages)
    assert len(classes) > 20
    for cls in classes:
        assert dialect_of(qualified(cls)) is Dialect.PIPECAT, cls


def test_dialect_values() -> None:
    assert Dialect("subagents") is Dialect.SUBAGENTS
    assert Dialect("pipecat") is Dialect.PIPECAT
    assert {d.value for d in Dialect} == {"subagents", "pipecat"}


# --- is_registry_type -------------------------------------------------------------


def test_registry_type_names_match_the_libraries() -> None:
    from pipecat.bus.messages import BusWorkerRegistryMessage
    from pipecat_subagents.bus.messages import BusAgentRegistryMessage

    assert qualified(BusAgentRegistryMessage) == SUBAGENTS_REGISTRY_TYPE
    assert qualified(BusWorkerRegistryMessage) == PIPECAT_REGISTRY_TYPE


@pytest.mark.parametrize("type_name", [SUBAGENTS_REGISTRY_TYPE, PIPECAT_REGISTRY_TYPE])
def test_is_registry_type(type_name: str) -> None:
    assert is_registry_type(type_name)


@pytest.mark.parametrize(
    "type_name",
    [
        "pipecat_subagents.bus.messages.BusAgentReadyMessage",
        "pipecat.bus.messages.BusWorkerReadyMessage",
        "pipecat_subagents.bus.messages.BusAgentRegistryMessageX",
        "pipecat.bus.messages.BusAgentRegistryMessage",  # right class, wrong dialect
        "pipecat_subagents.bus.messages.BusWorkerRegistryMessage",
        "BusAgentRegistryMessage",
        "",
    ],
)
def test_is_not_registry_type(type_name: str) -> None:
    assert not is_registry_type(type_name)


def test_only_the_registry_classes_are_registry_types() -> None:
    import pipecat.bus.messages as core
    import pipecat_subagents.bus.messages as subagents

    registries = [
        qualified(cls)
        for module in (subagents, core)
        for cls in library_message_classes(module)
        if is_registry_type(qualified(cls))
    ]
    assert sorted(registries) == sorted([SUBAGENTS_REGISTRY_TYPE, PIPECAT_REGISTRY_TYPE])


# --- registry_message -------------------------------------------------------------

SUBAGENTS_REGISTRY_JSON = (
    b'{"__type__":"pipecat_subagents.bus.messages.BusAgentRegistryMessage",'
    b'"__data__":{"source":"hub","runner":"hub:conn-1","agents":['
    b'{"__type__":"pipecat_subagents.types.AgentRegistryEntry",'
    b'"__data__":{"name":"voice","active":false,"bridged":false}}]}}'
)
PIPECAT_REGISTRY_JSON = (
    b'{"__type__":"pipecat.bus.messages.BusWorkerRegistryMessage",'
    b'"__data__":{"source":"hub","runner":"hub:conn-1","workers":['
    b'{"__type__":"pipecat.registry.types.WorkerRegistryEntry",'
    b'"__data__":{"name":"voice","active":false,"bridged":false}}]}}'
)


def test_subagents_registry_tree() -> None:
    tree = registry_message(Dialect.SUBAGENTS, source="hub", runner="hub:conn-1", agent="voice")
    assert tree == {
        "__type__": "pipecat_subagents.bus.messages.BusAgentRegistryMessage",
        "__data__": {
            "source": "hub",
            "runner": "hub:conn-1",
            "agents": [
                {
                    "__type__": "pipecat_subagents.types.AgentRegistryEntry",
                    "__data__": {"name": "voice", "active": False, "bridged": False},
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (Dialect.SUBAGENTS, SUBAGENTS_REGISTRY_JSON),
        (Dialect.PIPECAT, PIPECAT_REGISTRY_JSON),
    ],
)
def test_registry_message_bytes(dialect: Dialect, expected: bytes) -> None:
    tree = registry_message(dialect, source="hub", runner="hub:conn-1", agent="voice")
    as_json = encode_tree(tree, Format.JSON)
    assert as_json == expected
    as_msgpack = encode_tree(tree, Format.MSGPACK)
    assert as_msgpack == msgpack.packb(orjson.loads(expected), use_bin_type=True)
    assert translate(as_msgpack, Format.MSGPACK, Format.JSON) == expected
    assert translate(expected, Format.JSON, Format.MSGPACK) == as_msgpack


@pytest.mark.parametrize("dialect", [Dialect.SUBAGENTS, Dialect.PIPECAT])
@pytest.mark.parametrize("fmt", [Format.JSON, Format.MSGPACK])
def test_registry_message_envelope(dialect: Dialect, fmt: Format) -> None:
    tree = registry_message(dialect, source="hub", runner="r", agent="voice")
    envelope = decode_envelope(encode_tree(tree, fmt), fmt)
    assert envelope == Envelope(tree["__type__"], "hub", None, dialect)
    assert is_registry_type(envelope.type_name)


def library_for(dialect: Dialect, subagents_serializer: Any, pipecat_serializer: Any) -> Any:
    if dialect is Dialect.SUBAGENTS:
        from pipecat_subagents.bus.messages import BusAgentRegistryMessage
        from pipecat_subagents.types import AgentRegistryEntry

        return subagents_serializer, BusAgentRegistryMessage, AgentRegistryEntry, "agents"
    from pipecat.bus.messages import BusWorkerRegistryMessage
    from pipecat.registry.types import WorkerRegistryEntry

    return pipecat_serializer, BusWorkerRegistryMessage, WorkerRegistryEntry, "workers"


@pytest.mark.parametrize("dialect", [Dialect.SUBAGENTS, Dialect.PIPECAT])
@pytest.mark.parametrize("fmt", [Format.JSON, Format.MSGPACK])
@pytest.mark.parametrize("agent", ["voice", "émile", "エージェント", "a.b:c-d_e"])
def test_library_accepts_registry_message(
    dialect: Dialect,
    fmt: Format,
    agent: str,
    subagents_serializer: Any,
    pipecat_serializer: Any,
) -> None:
    serializer, message_cls, entry_cls, field = library_for(
        dialect, subagents_serializer, pipecat_serializer
    )
    tree = registry_message(dialect, source="hub", runner="hub:conn-7", agent=agent)
    data = encode_tree(tree, fmt)
    # A MsgPack client's serializer sees the same tree; the library reads JSON.
    as_json = data if fmt is Format.JSON else translate(data, Format.MSGPACK, Format.JSON)

    restored = serializer.deserialize(as_json)
    assert type(restored) is message_cls
    assert restored.source == "hub"
    assert restored.target is None
    assert restored.runner == "hub:conn-7"
    entries = getattr(restored, field)
    assert len(entries) == 1
    (entry,) = entries
    assert type(entry) is entry_cls
    assert entry.name == agent
    assert entry.parent is None
    assert entry.active is False
    assert entry.bridged is False
    assert entry.started_at is None


@pytest.mark.parametrize("dialect", [Dialect.SUBAGENTS, Dialect.PIPECAT])
def test_registry_message_matches_what_the_library_emits(
    dialect: Dialect, subagents_serializer: Any, pipecat_serializer: Any
) -> None:
    serializer, message_cls, entry_cls, field = library_for(
        dialect, subagents_serializer, pipecat_serializer
    )
    emitted = orjson.loads(
        serializer.serialize(
            message_cls(source="hub", runner="hub:conn-1", **{field: [entry_cls(name="voice")]})
        )
    )
    # The library also writes per-instance bookkeeping (id, name, ...) that it
    # regenerates on receipt; everything else must be the same tree.
    init_fields = {f.name for f in dataclasses.fields(message_cls) if f.init}
    emitted["__data__"] = {k: v for k, v in emitted["__data__"].items() if k in init_fields}
    ours = registry_message(dialect, source="hub", runner="hub:conn-1", agent="voice")
    assert ours == emitted
    assert (
        orjson.loads(
            SUBAGENTS_REGISTRY_JSON if dialect is Dialect.SUBAGENTS else PIPECAT_REGISTRY_JSON
        )
        == emitted
    )


def test_registry_message_is_fresh_each_call() -> None:
    first = registry_message(Dialect.SUBAGENTS, source="hub", runner="r", agent="a")
    first["__data__"]["agents"][0]["__data__"]["name"] = "mutated"
    second = registry_message(Dialect.SUBAGENTS, source="hub", runner="r", agent="a")
    assert second["__data__"]["agents"][0]["__data__"]["name"] == "a"
