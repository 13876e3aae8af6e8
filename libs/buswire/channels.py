"""Names of the broker channels and keys, derived from agent names.

Every name carries the agent in a Redis Cluster hash tag (``{agent}``), so an
agent's message channel, presence channel and presence key live on one shard.
"""

import re
import unicodedata

from buswire.errors import DecodeError
from buswire.reasons import DropReason

MAX_AGENT_NAME = 128
_PREFIX = "bushub"


# Characters that render as nothing (Unicode's Default_Ignorable_Code_Point, those
# ``str.isprintable`` lets through among them: a Hangul filler, a variation selector,
# a combining grapheme joiner...; and the blank Braille pattern): a name holding one
# looks like another name in every log line and console row.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2800"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def validate_agent_name(name: str) -> str:
    """Check that ``name`` can name an agent.

    Raises:
        DecodeError: ``bad_agent`` when empty, too long, or holding characters that
            would break channel names (braces, whitespace, control characters), that
            render as nothing, or not in Unicode's NFC (``café`` written with a
            combining accent would be a second name that looks like the first).
    """
    if not name or len(name) > MAX_AGENT_NAME:
        raise DecodeError(DropReason.BAD_AGENT, "length")
    if any(ch in "{}" or ch.isspace() or not ch.isprintable() for ch in name):
        raise DecodeError(DropReason.BAD_AGENT, "characters")
    if not name.isascii():
        if _INVISIBLE.search(name) or unicodedata.category(name[0]).startswith("M"):
            # (A combining mark first has nothing to sit on.)
            raise DecodeError(DropReason.BAD_AGENT, "characters that render as nothing")
        if not unicodedata.is_normalized("NFC", name):
            raise DecodeError(DropReason.BAD_AGENT, "not in Unicode NFC")
    return name


def message_channel(agent: str) -> str:
    """The channel that carries messages addressed to ``agent``."""
    return f"{_PREFIX}:msg:{{{agent}}}"


def presence_channel(agent: str) -> str:
    """The channel that carries ``agent``'s presence events (up, down, claim)."""
    return f"{_PREFIX}:presence:{{{agent}}}"


def claim_key(agent: str) -> str:
    """The key holding the connection that made ``agent``'s newest claim."""
    return f"{_PREFIX}:claim:{{{agent}}}"


def presence_key(agent: str) -> str:
    """The key holding ``agent``'s presence record."""
    return f"{_PREFIX}:agent:{{{agent}}}"


def session_key(agent: str) -> str:
    """The hash holding the session that holds ``agent``'s name (docs/protocol.md,
    Sessions): its id, epoch, newest position, stream size and holding connection."""
    return f"{_PREFIX}:session:{{{agent}}}"


def stream_key(agent: str) -> str:
    """The stream of messages addressed to ``agent``'s session, by position."""
    return f"{_PREFIX}:stream:{{{agent}}}"


def relayed_key(agent: str) -> str:
    """The hash of the newest position relayed to ``agent`` per sending session."""
    return f"{_PREFIX}:relayed:{{{agent}}}"


def tap_channel(agent: str) -> str:
    """The channel that carries what nodes see of ``agent``'s traffic while it is tapped
    (docs/protocol.md, Operator API)."""
    return f"{_PREFIX}:tap:{{{agent}}}"


def ops_channel() -> str:
    """The channel every node listens to for operators' notices: which agents are
    tapped, and whether a console is watching."""
    return f"{_PREFIX}:ops"


def console_channel() -> str:
    """The channel nodes report themselves on while a console is watching."""
    return f"{_PREFIX}:console"


def node_channel(node: str) -> str:
    """A node's own channel: always subscribed while the node runs, so that the number
    of subscribers a publish on it reaches says whether the node is still there."""
    return f"{_PREFIX}:node:{node}"


# The node registry's keys share one hash tag: its scripts touch several at once.
_NODES = f"{_PREFIX}:{{nodes}}"


def live_nodes_key() -> str:
    """The sorted set of nodes by the time (Redis clock, ms) their heartbeat lapses."""
    return f"{_NODES}:live"


def collecting_key() -> str:
    """The sorted set of dead nodes being cleaned up, by when the cleaner's hold ends."""
    return f"{_NODES}:collecting"


def gone_key() -> str:
    """The sorted set of nodes cleaned up after, by when they stop being listed dead:
    every node's beat sees a dead node for a while, however fast it was cleaned up."""
    return f"{_NODES}:gone"


def node_index_key(node: str) -> str:
    """The set of ``"<conn> <agent>"`` claims a node has made and not withdrawn."""
    return f"{_NODES}:index:{node}"


def collected_index_key(node: str) -> str:
    """A dead node's index, taken over by the node cleaning up after it."""
    return f"{_NODES}:collected:{node}"
