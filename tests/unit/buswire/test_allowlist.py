"""The type allowlist against the libraries themselves, and TypePolicy's decisions.

``BUS_MESSAGE_TYPES`` is written out by hand so that buswire never imports pipecat;
these tests introspect both libraries to prove the list is exactly the bus messages
that cross a network (every ``BusMessage`` subclass that is not a ``BusLocalMessage``).
"""

import importlib
import inspect
import json
import pkgutil
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buswire import DecodeError
from buswire.allowlist import BUS_MESSAGE_TYPES, TypePolicy
from buswire.complexity import MAX_DEPTH, container_budget
from buswire.dialect import PIPECAT_REGISTRY_TYPE, SUBAGENTS_REGISTRY_TYPE

# Where each library defines its bus messages, by the module holding its base classes.
MESSAGE_MODULES = {
    "pipecat_subagents.bus.messages": ("pipecat_subagents.bus.messages",),
    # pipecat core's UI worker protocol carries its own BusDataMessage subclasses.
    "pipecat.bus.messages": ("pipecat.bus.messages", "pipecat.bus.ui.messages"),
}
# The packages whose modules may define bus messages; pgmq needs an extra not installed.
BUS_PACKAGES = ("pipecat_subagents.bus", "pipecat.bus")


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _crossing(module: ModuleType, candidates: list[type]) -> set[str]:
    base, local = module.BusMessage, module.BusLocalMessage
    return {
        _qualified(c)
        for c in candidates
        if issubclass(c, base) and c is not base and not issubclass(c, local)
    }


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_bus_message_types_are_exactly_the_network_crossing_classes() -> None:
    expected: set[str] = set()
    for base_name, names in MESSAGE_MODULES.items():
        base = importlib.import_module(base_name)
        for name in names:
            module = importlib.import_module(name)
            members = inspect.getmembers(module, inspect.isclass)
            expected |= _crossing(base, [c for _, c in members if c.__module__ == name])
    assert sorted(expected - BUS_MESSAGE_TYPES) == [], "missing from the allowlist"
    assert sorted(BUS_MESSAGE_TYPES - expected) == [], "allowed but not a bus message"


def test_no_local_message_is_allowed() -> None:
    for name in MESSAGE_MODULES:
        module = importlib.import_module(name)
        local = {_qualified(c) for c in _all_subclasses(module.BusLocalMessage)}
        assert local, f"{name} defines local messages"
        assert not local & BUS_MESSAGE_TYPES


def test_every_bus_message_the_bus_packages_define_is_allowed() -> None:
    # Bus messages are not only in bus.messages: pipecat core's UI worker protocol
    # (pipecat.bus.ui.messages) defines network-crossing carriers too.
    for package in BUS_PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}.", onerror=lambda _: None):
            if "pgmq" not in info.name:
                importlib.import_module(info.name)
    crossing: set[str] = set()
    for name in MESSAGE_MODULES:
        module = importlib.import_module(name)
        crossing |= _crossing(module, sorted(_all_subclasses(module.BusMessage), key=str))
    crossing = {n for n in crossing if n.startswith(("pipecat.", "pipecat_subagents."))}
    assert sorted(crossing - BUS_MESSAGE_TYPES) == []


def test_registry_types_are_bus_message_types() -> None:
    # The hub refuses them from clients by name, not because they are unknown.
    assert {SUBAGENTS_REGISTRY_TYPE, PIPECAT_REGISTRY_TYPE} <= BUS_MESSAGE_TYPES


def test_real_messages_pass(subagents_serializer: Any, pipecat_serializer: Any) -> None:
    from pipecat.bus import BusFrameMessage as PipecatFrame
    from pipecat.frames.frames import InputAudioRawFrame, TextFrame
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat_subagents.bus import BusFrameMessage, BusTaskRequestMessage

    policy = TypePolicy()
    audio = InputAudioRawFrame(audio=b"\x00\x01" * 8, sample_rate=16000, num_channels=1)
    for serializer, message in (
        (
            subagents_serializer,
            BusFrameMessage(source="a", frame=audio, direction=FrameDirection.DOWNSTREAM),
        ),
        (
            subagents_serializer,
            BusTaskRequestMessage(source="a", target="b", task_id="t", payload={"x": 1}),
        ),
        (
            pipecat_serializer,
            PipecatFrame(source="a", frame=TextFrame(text="hi"), direction=FrameDirection.UPSTREAM),
        ),
    ):
        data = serializer.serialize(message)
        policy.check(json.loads(data), container_budget(len(data)))


def message(type_name: Any = "pipecat.bus.messages.BusDataMessage", **data: Any) -> dict[str, Any]:
    return {"__type__": type_name, "__data__": {"source": "a", "target": "b", **data}}


# More than any tree here holds: the count has tests of its own.
ROOMY = 10_000


def reason(policy: TypePolicy, tree: dict[str, Any], max_containers: int = ROOMY) -> str | None:
    try:
        policy.check(tree, max_containers)
    except DecodeError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize(
    "type_name",
    [
        "os.system",
        "subprocess.Popen",
        "builtins.eval",
        "pipecat.frames.frames.TextFrame",
        "pipecat.bus.messages.BusLocalMessage",
        "pipecat.bus.messages.BusMessage",
        "pipecat.bus.messages.BusAddWorkerMessage",
        "pipecat_subagents.bus.messages.BusAddAgentMessage",
        "pipecat.bus.messages.BusDataMessageX",
        "",
        None,
        1,
    ],
)
def test_top_level_refusals(type_name: Any) -> None:
    assert reason(TypePolicy(), message(type_name)) == "type_not_allowed"


@pytest.mark.parametrize(
    "type_name", [["pipecat.bus.messages.BusDataMessage"], {"pipecat.bus.messages.X": 1}]
)
def test_unhashable_top_level_type_is_refused_not_a_crash(type_name: Any) -> None:
    # check() promises DecodeError; the hub's route() happens to refuse these earlier
    # (envelope_of), but the policy must not depend on its caller for that.
    assert reason(TypePolicy(), message(type_name)) == "type_not_allowed"


@pytest.mark.parametrize(
    "payload",
    [
        {"__type__": "os.system", "__data__": "id"},
        [{"__type__": "os.system", "__data__": "id"}],
        {"a": {"b": [0, {"c": {"__type__": "subprocess.Popen", "__data__": {}}}]}},
        {"__type__": "bytes", "__data__": {"__type__": "os.system", "__data__": "id"}},
        {"__type__": "pipecat.frames.frames.TextFrame", "__data__": {"x": {"__type__": "os.x"}}},
        {"__type__": "pipecat_evil.mod.Class", "__data__": {}},
        {"__type__": "pipecatx.Class", "__data__": {}},
        {"__type__": "bytesx", "__data__": "AA=="},
        {"__type__": 5, "__data__": {}},
        {"__type__": ["pipecat.frames.frames.TextFrame"], "__data__": {}},
        {"__type__": "", "__data__": {}},
    ],
)
def test_nested_refusals(payload: Any) -> None:
    assert reason(TypePolicy(), message(payload=payload)) == "nested_type_not_allowed"


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"plain": [1, "two", {"three": 3.0}]},
        {"__type__": "bytes", "__data__": "AAEC"},
        {"__type__": "pipecat.frames.frames.TextFrame", "__data__": {"text": "hi"}},
        {"__type__": "pipecat_subagents.types.AgentRegistryEntry", "__data__": {"name": "x"}},
        [{"__type__": "pipecat.processors.frame_processor.FrameDirection", "__data__": "UP"}],
        {"key": "__type__"},  # a value that merely says __type__
    ],
)
def test_allowed_trees(payload: Any) -> None:
    assert reason(TypePolicy(), message(payload=payload)) is None


def test_operator_types_and_prefixes() -> None:
    policy = TypePolicy(extra_types=["myapp.bus.Custom"], extra_prefixes=["myapp.types."])
    nested_ok = {"__type__": "myapp.types.Thing", "__data__": {}}
    assert reason(policy, message("myapp.bus.Custom", payload=nested_ok)) is None
    assert reason(policy, message("myapp.bus.Other")) == "type_not_allowed"
    # A custom prefix does not open the top level, nor its near misses.
    assert reason(policy, message("myapp.types.Thing")) == "type_not_allowed"
    evil = {"__type__": "myapp.typesevil.X", "__data__": {}}
    assert reason(policy, message(payload=evil)) == "nested_type_not_allowed"
    # The defaults are still there, and nothing leaks into a fresh policy.
    assert reason(policy, message()) is None
    assert reason(TypePolicy(), message("myapp.bus.Custom")) == "type_not_allowed"


def test_depth_is_bounded_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    assert reason(TypePolicy(), message(payload=deep)) == "too_complex"
    fine: Any = "leaf"
    for _ in range(MAX_DEPTH - 5):
        fine = {"x": fine}
    assert reason(TypePolicy(), message(payload=fine)) is None


def test_only_the_data_is_walked_not_sibling_keys() -> None:
    # The libraries' deserializers read __type__ and __data__ only; a sibling key is
    # never instantiated, so it is not the policy's concern, but __data__ always is.
    tree = message(payload={"__type__": "os.system", "__data__": "id"})
    tree["__extra__"] = {"__type__": "os.system"}
    assert reason(TypePolicy(), tree) == "nested_type_not_allowed"
    del tree["__data__"]["payload"]
    assert reason(TypePolicy(), tree) is None


def containers(tree: Any) -> int:
    if isinstance(tree, dict):
        return 1 + sum(containers(v) for v in tree.values())
    if isinstance(tree, list):
        return 1 + sum(containers(v) for v in tree)
    return 0


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([[] for _ in range(50)], id="flat-lists"),
        pytest.param([{} for _ in range(50)], id="flat-maps"),
        pytest.param({"a": [{"b": [1, 2, {"c": []}]}] * 10}, id="mixed"),
        pytest.param([0] * 1000, id="scalars-are-free"),
    ],
)
def test_containers_are_counted_to_the_last(payload: Any) -> None:
    tree = message(payload=payload)
    total = containers(tree)
    assert reason(TypePolicy(), tree, total) is None
    assert reason(TypePolicy(), tree, total - 1) == "too_complex"


def test_sibling_keys_count_too() -> None:
    # Not type-checked, but relayed and translated all the same.
    tree = message()
    tree["__extra__"] = [[] for _ in range(20)]
    total = containers(tree)
    assert reason(TypePolicy(), tree, total) is None
    assert reason(TypePolicy(), tree, total - 1) == "too_complex"


@given(
    st.recursive(
        st.none() | st.integers(),
        lambda kids: st.lists(kids) | st.dictionaries(st.text(max_size=3), kids),
        max_leaves=40,
    )
)
def test_property_the_count_is_exact(payload: Any) -> None:
    tree = message(payload=payload)
    total = containers(tree)
    assert reason(TypePolicy(), tree, total) is None
    assert reason(TypePolicy(), tree, total - 1) == "too_complex"
