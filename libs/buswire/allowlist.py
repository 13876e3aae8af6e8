"""Which ``__type__`` values may cross the hub.

The receiving pipecat serializer imports whatever module a ``__type__`` names and
instantiates the class: relaying arbitrary types from one tenant to another is a
code-execution surface. The hub relays only the bus message types of the two
dialects at the top level (operators may add their own), and nested values only
from allowed module prefixes.
"""

from collections.abc import Iterable
from typing import Any

from buswire.complexity import MAX_DEPTH, too_deep, too_many
from buswire.errors import DecodeError
from buswire.reasons import DropReason

_SUBAGENTS = "pipecat_subagents.bus.messages."
_PIPECAT = "pipecat.bus.messages."
_PIPECAT_UI = "pipecat.bus.ui.messages."

# Every network-crossing BusMessage class of pipecat-ai-subagents 0.6.0 and
# pipecat-ai 1.14.0, UI messages included (BusLocalMessage subclasses never leave a
# process).
BUS_MESSAGE_TYPES: frozenset[str] = frozenset(
    [
        _SUBAGENTS + name
        for name in (
            "BusActivateAgentMessage",
            "BusAgentErrorMessage",
            "BusAgentReadyMessage",
            "BusAgentRegistryMessage",
            "BusCancelAgentMessage",
            "BusCancelMessage",
            "BusDataMessage",
            "BusDeactivateAgentMessage",
            "BusEndAgentMessage",
            "BusEndMessage",
            "BusFrameMessage",
            "BusSystemMessage",
            "BusTaskCancelMessage",
            "BusTaskRequestMessage",
            "BusTaskResponseMessage",
            "BusTaskResponseUrgentMessage",
            "BusTaskStreamDataMessage",
            "BusTaskStreamEndMessage",
            "BusTaskStreamStartMessage",
            "BusTaskUpdateMessage",
            "BusTaskUpdateRequestMessage",
            "BusTaskUpdateUrgentMessage",
        )
    ]
    + [
        _PIPECAT + name
        for name in (
            "BusActivateWorkerMessage",
            "BusCancelMessage",
            "BusCancelWorkerMessage",
            "BusDataMessage",
            "BusDeactivateWorkerMessage",
            "BusEndMessage",
            "BusEndWorkerMessage",
            "BusFlushProgressMessage",
            "BusFrameMessage",
            "BusJobCancelMessage",
            "BusJobRequestMessage",
            "BusJobResponseMessage",
            "BusJobResponseUrgentMessage",
            "BusJobStreamDataMessage",
            "BusJobStreamEndMessage",
            "BusJobStreamStartMessage",
            "BusJobUpdateMessage",
            "BusJobUpdateRequestMessage",
            "BusJobUpdateUrgentMessage",
            "BusSystemMessage",
            "BusTTSSpeakMessage",
            "BusWorkerErrorMessage",
            "BusWorkerReadyMessage",
            "BusWorkerRegistryMessage",
        )
    ]
    + [
        _PIPECAT_UI + name
        for name in (
            "BusUICommandMessage",
            "BusUIDataMessage",
            "BusUIEventMessage",
            "BusUIJobCompletedMessage",
            "BusUIJobGroupCompletedMessage",
            "BusUIJobGroupStartedMessage",
            "BusUIJobUpdateMessage",
        )
    ]
)

NESTED_PREFIXES: tuple[str, ...] = ("pipecat.", "pipecat_subagents.")
NESTED_EXACT: frozenset[str] = frozenset(["bytes"])


class TypePolicy:
    """Decides whether a parsed message tree may be relayed.

    Args:
        extra_types: Top-level types to allow besides the libraries' bus messages.
        extra_prefixes: Module prefixes to allow for nested values.
    """

    def __init__(self, extra_types: Iterable[str] = (), extra_prefixes: Iterable[str] = ()) -> None:
        self._top = BUS_MESSAGE_TYPES | frozenset(extra_types)
        self._prefixes = NESTED_PREFIXES + tuple(extra_prefixes)

    def _nested_ok(self, type_name: str) -> bool:
        return type_name in NESTED_EXACT or type_name.startswith(self._prefixes)

    def check(self, tree: dict[str, Any], max_containers: int) -> None:
        """Refuse a tree whose types are not all allowed, or that is too complex.

        The walk that checks nested types also counts maps and lists: it visits
        every one of them anyway, so the bound costs a subtraction each.

        Args:
            tree: A parsed frame whose envelope has been checked.
            max_containers: The most maps and lists the tree may hold, its top map
                included (``buswire.complexity.container_budget``).

        Raises:
            DecodeError: ``type_not_allowed`` for the top level,
                ``nested_type_not_allowed`` for anything below it, ``too_complex``
                for more containers than ``max_containers`` or nesting deeper
                than ``MAX_DEPTH``.
        """
        type_name = tree.get("__type__")
        if not isinstance(type_name, str) or type_name not in self._top:
            raise DecodeError(DropReason.TYPE_NOT_ALLOWED, str(type_name)[:100])
        left = max_containers - 1  # the top map
        data = tree.get("__data__")
        if type(data) is dict or type(data) is list:
            left = self._walk(data, 1, left)
        if len(tree) > 2:
            # The libraries read __type__ and __data__ only, so other keys are not
            # the type policy's concern; but they still cost the node to relay.
            for key, value in tree.items():
                if key != "__data__" and (type(value) is dict or type(value) is list):
                    left = _count(value, 1, left)

    def _walk(self, value: dict[str, Any] | list[Any], depth: int, left: int) -> int:
        # Recursive, and only into containers: most values are scalars, and this
        # runs on every frame (exact type checks: both decoders make plain dicts
        # and lists). Returns how many more containers the tree may hold.
        if depth > MAX_DEPTH:
            raise too_deep()
        left -= 1
        if left < 0:
            raise too_many()
        if type(value) is dict:
            nested = value.get("__type__")
            if nested is not None and not (isinstance(nested, str) and self._nested_ok(nested)):
                raise DecodeError(DropReason.NESTED_TYPE_NOT_ALLOWED, str(nested)[:100])
            children = value.values()
        else:
            children = value  # type: ignore[assignment]
        for child in children:
            if type(child) is dict or type(child) is list:
                left = self._walk(child, depth + 1, left)
        return left


def _count(value: dict[str, Any] | list[Any], depth: int, left: int) -> int:
    """``TypePolicy._walk`` without the type checks."""
    if depth > MAX_DEPTH:
        raise too_deep()
    left -= 1
    if left < 0:
        raise too_many()
    for child in value.values() if type(value) is dict else value:
        if type(child) is dict or type(child) is list:
            left = _count(child, depth + 1, left)
    return left
