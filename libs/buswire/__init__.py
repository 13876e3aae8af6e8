"""Sans-I/O bus wire protocol: bytes in, envelopes and bytes out, no sockets.

Nothing here imports asyncio, redis, fastapi or pipecat, so every rule of the wire
can be tested with plain bytes.
"""

from buswire.channels import message_channel, presence_channel, presence_key, validate_agent_name
from buswire.codec import decode_envelope, sniff_format, translate
from buswire.dialect import Dialect, dialect_of, is_registry_type, registry_message
from buswire.envelope import Envelope
from buswire.errors import DecodeError, WireError
from buswire.formats import Format
from buswire.reasons import DropReason

__all__ = [
    "DecodeError",
    "Dialect",
    "DropReason",
    "Envelope",
    "Format",
    "WireError",
    "decode_envelope",
    "dialect_of",
    "is_registry_type",
    "message_channel",
    "presence_channel",
    "presence_key",
    "registry_message",
    "sniff_format",
    "translate",
    "validate_agent_name",
]
