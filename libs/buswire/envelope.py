"""What routing needs to know about a message, and nothing more."""

from dataclasses import dataclass

from buswire.dialect import Dialect


@dataclass(frozen=True, slots=True)
class Envelope:
    """The routable part of a bus message.

    Attributes:
        type_name: The top-level ``__type__`` (``<module>.<Class>``).
        source: ``__data__.source``: the sending agent.
        target: ``__data__.target``, or None for untargeted messages.
        dialect: Which pipecat library the type comes from, None if neither.
    """

    type_name: str
    source: str
    target: str | None
    dialect: Dialect | None
