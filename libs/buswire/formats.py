"""The two serializations of the bus message tree."""

from enum import StrEnum


class Format(StrEnum):
    """How a connection encodes the tagged message tree."""

    JSON = "json"
    MSGPACK = "msgpack"
