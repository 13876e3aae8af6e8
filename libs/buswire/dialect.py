"""The two pipecat dialects and the registry messages the hub speaks in each.

Both libraries share one wire design under different names (agent → worker). A
client learns that its peer exists only from a registry message, so the hub builds
those itself, byte-compatible with what each library's JSON serializer emits.
"""

from enum import StrEnum
from typing import Any

SUBAGENTS_PREFIX = "pipecat_subagents."
PIPECAT_PREFIX = "pipecat."

SUBAGENTS_REGISTRY_TYPE = "pipecat_subagents.bus.messages.BusAgentRegistryMessage"
PIPECAT_REGISTRY_TYPE = "pipecat.bus.messages.BusWorkerRegistryMessage"


class Dialect(StrEnum):
    """Which library a client speaks; ``auto`` means not known yet."""

    SUBAGENTS = "subagents"
    PIPECAT = "pipecat"


_REGISTRY_SHAPES: dict[Dialect, tuple[str, str, str]] = {
    # dialect: (message type, list field, entry type)
    Dialect.SUBAGENTS: (
        SUBAGENTS_REGISTRY_TYPE,
        "agents",
        "pipecat_subagents.types.AgentRegistryEntry",
    ),
    Dialect.PIPECAT: (
        PIPECAT_REGISTRY_TYPE,
        "workers",
        "pipecat.registry.types.WorkerRegistryEntry",
    ),
}


def dialect_of(type_name: str) -> Dialect | None:
    """Tell the dialect from a ``__type__`` module prefix.

    The subagents prefix is checked first: it also starts with ``pipecat``.
    """
    if type_name.startswith(SUBAGENTS_PREFIX):
        return Dialect.SUBAGENTS
    if type_name.startswith(PIPECAT_PREFIX):
        return Dialect.PIPECAT
    return None


def is_registry_type(type_name: str) -> bool:
    """True for the registry message of either dialect."""
    return type_name in (SUBAGENTS_REGISTRY_TYPE, PIPECAT_REGISTRY_TYPE)


def registry_message(dialect: Dialect, *, source: str, runner: str, agent: str) -> dict[str, Any]:
    """Build the tagged tree of a registry message announcing one agent.

    Args:
        dialect: Which library's types to name.
        source: The sending component (the hub).
        runner: The runner the agent is said to live on. Clients deduplicate agents
            per runner, so a new runner name makes ``@agent_ready`` fire again.
        agent: The announced agent's name.

    Returns:
        The tree, ready for any codec. Fields that are None are omitted, as the
        library's serializer does.
    """
    type_name, field, entry_type = _REGISTRY_SHAPES[dialect]
    entry = {"__type__": entry_type, "__data__": {"name": agent, "active": False, "bridged": False}}
    return {
        "__type__": type_name,
        "__data__": {"source": source, "runner": runner, field: [entry]},
    }
