"""The two serializations of the bus message tree."""

from enum import Enum


class Format(str, Enum):
    """How a connection encodes the tagged message tree."""

    JSON = "json"
    MSGPACK = "msgpack"
