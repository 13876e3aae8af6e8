"""Every networked bus message type of both dialects, hypothesis strategies to build
them, and a structural equality for what the serializers hand back.

The message classes are found by introspection, so a type the library adds later is
tested without anyone listing it. Field values come from the type hints: text, 64-bit
ints, floats without NaN (infinities included), dicts of JSON-like values that may
hold bytes and non-string keys, nested dataclasses, enums, frames with audio and
image bytes, and ``LLMContext``/``ToolsSchema`` values (the libraries' adapters).
"""

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Any

import msgpack
import pipecat.bus.messages as pipecat_messages
import pipecat.bus.ui.messages as pipecat_ui_messages
import pipecat.frames.frames as frames
import pipecat_subagents.bus.messages as subagents_messages
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pipecat.adapters.llm.schemas.direct_function import DirectFunction
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import AdapterType, ToolsSchema
from pipecat.bus.serializers import JSONMessageSerializer as PipecatJSON
from pipecat.pipeline.job_context import JobStatus
from pipecat.processors.aggregators.llm_context import (
    NOT_GIVEN,
    LLMContext,
    LLMSpecificMessage,
    NotGiven,
)
from pipecat_subagents.agents.task_context import TaskStatus
from pipecat_subagents.bus.serializers import JSONMessageSerializer as SubagentsJSON

from busclient.pipecat_core import MsgPackMessageSerializer as PipecatMsgPack
from busclient.subagents import MsgPackMessageSerializer as SubagentsMsgPack

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Names the libraries import only under TYPE_CHECKING; local-only types never get here.
_HINT_NAMES = {
    "TaskStatus": TaskStatus,
    "JobStatus": JobStatus,
    "LLMContext": LLMContext,
    "NotGiven": NotGiven,
    "FunctionSchema": FunctionSchema,
    "DirectFunction": DirectFunction,
}


@dataclass(frozen=True)
class Dialect:
    """One pipecat library: its message modules and its two serializers."""

    name: str
    modules: tuple[types.ModuleType, ...]
    base: type
    local: type
    json: Any
    msgpack: Any

    def message_types(self) -> list[type]:
        """Dataclass subclasses of BusMessage that may cross a network, by name."""
        found: dict[str, type] = {}
        for module in self.modules:
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if (
                    cls.__module__ == module.__name__
                    and issubclass(cls, self.base)
                    and dataclasses.is_dataclass(cls)
                    and not issubclass(cls, self.local)
                ):
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        return [found[name] for name in sorted(found)]


SUBAGENTS = Dialect(
    name="subagents",
    modules=(subagents_messages,),
    base=subagents_messages.BusMessage,
    local=subagents_messages.BusLocalMessage,
    json=SubagentsJSON(),
    msgpack=SubagentsMsgPack(),
)
PIPECAT = Dialect(
    name="pipecat",
    modules=(pipecat_messages, pipecat_ui_messages),
    base=pipecat_messages.BusMessage,
    local=pipecat_messages.BusLocalMessage,
    json=PipecatJSON(),
    msgpack=PipecatMsgPack(),
)
DIALECTS = (SUBAGENTS, PIPECAT)


def all_message_types() -> list[tuple[Dialect, type]]:
    """Every (dialect, message class) pair under test."""
    return [(dialect, cls) for dialect in DIALECTS for cls in dialect.message_types()]


def case_id(value: Any) -> str:
    """pytest id for a Dialect or a class."""
    if isinstance(value, Dialect):
        return value.name
    return getattr(value, "__name__", repr(value))


# --- leaf and container strategies -------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what MsgPack can hold
FLOATS = st.floats(allow_nan=False)
TEXT = st.text(max_size=24)
NAMES = st.text(min_size=1, max_size=16)
# json.dumps turns int, float, bool and None keys into strings; the MsgPack side must too.
KEYS = st.one_of(TEXT, TEXT, TEXT, INT64, st.booleans(), st.none(), FLOATS)
JSON_LEAVES = st.one_of(st.none(), st.booleans(), INT64, FLOATS, TEXT)
# Values a dict or Any field may hold: JSON-like, plus bytes anywhere in the tree.
VALUES = st.recursive(
    JSON_LEAVES | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
DICTS = st.dictionaries(KEYS, VALUES, max_size=5)
AUDIO = st.binary(max_size=4000)


def _dropped_callback() -> None:
    """A callable field value: both serializers drop it."""


# Tool definitions (schemas, provider-native tools): the adapters hand them to the
# encoder as they are, not through _serialize_value, so they hold only what json.dumps
# takes as is (string keys, no bytes). Non-string keys there: test_adapter_keys.py.
PLAIN_JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
FUNCTION_SCHEMAS = st.builds(
    FunctionSchema,
    name=NAMES,
    description=TEXT,
    properties=st.dictionaries(
        TEXT,
        st.fixed_dictionaries(
            {"type": st.sampled_from(["string", "integer", "boolean"]), "description": TEXT},
            optional={"enum": st.lists(PLAIN_JSON, max_size=3), "default": PLAIN_JSON},
        ),
        max_size=3,
    ),
    required=st.lists(TEXT, max_size=2),
)
CUSTOM_TOOLS = st.none() | st.dictionaries(
    st.sampled_from(AdapterType),
    st.lists(st.dictionaries(TEXT, PLAIN_JSON, min_size=1, max_size=2), max_size=2),
    max_size=2,
)
TOOLS_SCHEMAS = st.builds(
    ToolsSchema,
    standard_tools=st.lists(FUNCTION_SCHEMAS, max_size=3),
    custom_tools=CUSTOM_TOOLS,
)
NONEMPTY_TOOLS_SCHEMAS = st.builds(
    ToolsSchema,
    standard_tools=st.lists(FUNCTION_SCHEMAS, min_size=1, max_size=3),
    custom_tools=CUSTOM_TOOLS,
)
LLM_MESSAGES = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2
            ),
        }
    ),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": TEXT, "content": TEXT}),
    st.builds(
        LLMSpecificMessage,
        llm=st.sampled_from(["google", "anthropic", "openai"]),
        message=VALUES,
    ),
)
TOOL_CHOICES = st.one_of(
    st.just(NOT_GIVEN),
    st.sampled_from(["auto", "none", "required"]),
    st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries({"name": NAMES})}
    ),
)
LLM_CONTEXTS = st.builds(
    LLMContext,
    messages=st.lists(LLM_MESSAGES, max_size=4),
    tools=st.just(NOT_GIVEN) | TOOLS_SCHEMAS,
    tool_choice=TOOL_CHOICES,
)
# pipecat-ai-subagents 0.6.0 restores a context without tools with openai's NOT_GIVEN,
# which pipecat-ai 1.14.0's LLMContext refuses (TypeError): its JSON round trip only
# succeeds for contexts that have tools.
LLM_CONTEXTS_WITH_TOOLS = st.builds(
    LLMContext,
    messages=st.lists(LLM_MESSAGES, max_size=4),
    tools=NONEMPTY_TOOLS_SCHEMAS,
    tool_choice=TOOL_CHOICES,
)

_AUDIO_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "audio": AUDIO,
    "sample_rate": st.sampled_from([8000, 16000, 24000, 48000]),
    "num_channels": st.integers(min_value=1, max_value=2),
}
_IMAGE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "image": AUDIO,
    "size": st.tuples(st.integers(0, 4096), st.integers(0, 4096)),
    "format": st.sampled_from([None, "RGB", "RGBA", "JPEG"]),
}

# Field strategies that the type hint alone does not give.
FIELD_OVERRIDES: dict[type, dict[str, st.SearchStrategy[Any]]] = {
    frames.InputAudioRawFrame: _AUDIO_FIELDS,
    frames.OutputAudioRawFrame: _AUDIO_FIELDS,
    frames.OutputImageRawFrame: _IMAGE_FIELDS,
    frames.UserImageRawFrame: _IMAGE_FIELDS,
    frames.LLMSetToolsFrame: {"tools": TOOLS_SCHEMAS},
    frames.UserImageRequestFrame: {
        "result_callback": st.sampled_from([None, _dropped_callback]),
    },
}
# Frames a BusFrameMessage carries in the tests: audio, images (one with a nested
# request frame), text, and the two adapter-carrying frames.
FRAME_TYPES: tuple[type, ...] = (
    frames.InputAudioRawFrame,
    frames.OutputAudioRawFrame,
    frames.OutputImageRawFrame,
    frames.UserImageRawFrame,
    frames.TextFrame,
    frames.TranscriptionFrame,
    frames.LLMContextFrame,
    frames.LLMSetToolsFrame,
)


@cache
def type_hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass, names from TYPE_CHECKING blocks included."""
    return typing.get_type_hints(cls, localns=_HINT_NAMES)


def for_hint(hint: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of a resolved type hint."""
    if hint is Any:
        return VALUES
    if hint is type(None):
        return st.none()
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(for_hint(arg) for arg in typing.get_args(hint)))
    if hint is frames.Frame:
        return frames_of(FRAME_TYPES)
    if hint is LLMContext:
        return LLM_CONTEXTS
    if hint is ToolsSchema:
        return TOOLS_SCHEMAS
    simple: dict[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(),
        int: INT64,
        float: FLOATS,
        str: TEXT,
        bytes: AUDIO,
    }
    if hint in simple:
        return simple[hint]
    if hint is dict or origin is dict:
        return DICTS
    if origin is list:
        args = typing.get_args(hint)
        return st.lists(for_hint(args[0]) if args else VALUES, max_size=3)
    if origin is tuple:
        return st.tuples(*(for_hint(arg) for arg in typing.get_args(hint)))
    if inspect.isclass(hint) and issubclass(hint, Enum):
        return st.sampled_from(list(hint))
    if dataclasses.is_dataclass(hint):
        return instances(hint)
    raise TypeError(f"no strategy for type hint {hint!r}")


@st.composite
def instances(draw: st.DrawFn, cls: type) -> Any:
    """An instance of a dataclass with random values in its fields.

    Required init fields always get a value, optional ones sometimes; fields set
    after ``__init__`` (a frame's id, pts, metadata...) are sometimes overwritten,
    since the serializers carry those too.
    """
    hints = type_hints(cls)
    overrides = FIELD_OVERRIDES.get(cls, {})

    def strategy(field: dataclasses.Field[Any]) -> st.SearchStrategy[Any]:
        if field.name in overrides:
            return overrides[field.name]
        return for_hint(hints[field.name])

    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if required or draw(st.booleans()):
            kwargs[field.name] = draw(strategy(field), label=f"{cls.__name__}.{field.name}")
    obj = cls(**kwargs)
    for field in dataclasses.fields(cls):
        if not field.init and draw(st.booleans()):
            setattr(obj, field.name, draw(strategy(field), label=f"{cls.__name__}.{field.name}"))
    return obj


def frames_of(frame_types: tuple[type, ...]) -> st.SearchStrategy[Any]:
    """Frames of the given classes."""
    return st.one_of(*(instances(cls) for cls in frame_types))


def messages(cls: type) -> st.SearchStrategy[Any]:
    """Bus messages of one class."""
    return instances(cls)


# --- structural equality -----------------------------------------------------------


@dataclass(frozen=True)
class Raised:
    """A call that raised: the exception's type and text."""

    type: type
    text: str


def outcome(call: Callable[..., Any], *args: Any) -> Any:
    """The value a call returns, or a Raised saying how it failed."""
    try:
        return call(*args)
    except Exception as exc:
        return Raised(type(exc), str(exc))


def assert_same(left: Any, right: Any, path: str = "$") -> None:
    """Assert two decoded values are structurally equal, saying where they differ.

    Types must match exactly; dicts compare keys in order; dataclasses and other
    objects compare every attribute in ``vars()`` (a frame's id and name included:
    both serializers restore them) plus every dataclass field; bytes by value;
    floats by value and sign.
    """
    assert type(left) is type(right), f"{path}: {left!r} != {right!r}"
    if isinstance(left, Raised):
        assert left == right, f"{path}: {left!r} != {right!r}"
    elif isinstance(left, Enum):
        assert left is right, f"{path}: {left!r} != {right!r}"
    elif isinstance(left, float):
        same = left == right and math.copysign(1.0, left) == math.copysign(1.0, right)
        assert same or (math.isnan(left) and math.isnan(right)), f"{path}: {left!r} != {right!r}"
    elif left is None or isinstance(left, str | int | bytes):
        assert left == right, f"{path}: {left!r} != {right!r}"
    elif isinstance(left, dict):
        assert list(left) == list(right), f"{path}: keys {list(left)!r} != {list(right)!r}"
        for key in left:
            assert_same(left[key], right[key], f"{path}[{key!r}]")
    elif isinstance(left, list | tuple):
        assert len(left) == len(right), f"{path}: length {len(left)} != {len(right)}"
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same(a, b, f"{path}[{index}]")
    elif hasattr(left, "__dict__"):
        names = list(vars(left))
        assert set(names) == set(vars(right)), f"{path}: attributes differ"
        if dataclasses.is_dataclass(left):
            names += [f.name for f in dataclasses.fields(left) if f.name not in names]
        for name in names:
            assert_same(getattr(left, name), getattr(right, name), f"{path}.{name}")
    else:
        assert left == right, f"{path}: {left!r} != {right!r}"


# --- the raw tagged tree -----------------------------------------------------------


def walk(tree: Any) -> Iterator[Any]:
    """Every node of a decoded JSON or MsgPack tree, depth first, in order."""
    yield tree
    if isinstance(tree, dict):
        for value in tree.values():
            yield from walk(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from walk(value)


def is_bytes_tag(node: Any) -> bool:
    """True for JSON's ``{"__type__": "bytes", "__data__": "<base64>"}`` wrapper."""
    return isinstance(node, dict) and node.get("__type__") == "bytes" and "__data__" in node


def raw_msgpack_tree(data: bytes) -> Any:
    """The tree as a plain MsgPack reader sees it."""
    return msgpack.unpackb(data, raw=False)


def bytes_leaves(tree: Any, decode_tag: Callable[[Any], bytes] | None = None) -> list[bytes]:
    """The byte strings of a tree in order: native ones, or tagged ones if decode_tag."""
    if decode_tag is None:
        return [node for node in walk(tree) if isinstance(node, bytes)]
    return [decode_tag(node) for node in walk(tree) if is_bytes_tag(node)]
