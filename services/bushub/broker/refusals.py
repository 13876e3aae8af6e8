"""Error replies from Redis: which ones a retry can fix, and what to call them.

A reachable Redis can still answer a command with an error. Some pass on their
own (a slot moving, a failover, a dataset loading); others last until an operator
acts: an ACL without the command (``NOPERM``), ``maxmemory`` reached under
``noeviction`` (``OOM``). Retrying the second kind at the head of an ordered queue
stalls everything behind it, so callers drop what cannot succeed and retry only
what can. A third kind is about the keys one command touched, not about Redis: a key
of the hub's that holds another type (``WRONGTYPE``, written by hand) or a value a
script cannot read; it fails every command on those keys and no other, so it is
that command's loss alone (``is_key_refusal``).

Replies arrive in two shapes: hiredis ``ReplyError`` (the raw connections),
whose text starts with the error code, and redis-py's typed errors, which strip
the code from the text and keep it in ``status_code``.
"""

from enum import StrEnum

from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError


class ErrorKind(StrEnum):
    """An error reply's code, as a bounded metric label."""

    NOPERM = "noperm"  # ACL: the user may not run the command or touch the key/channel
    OOM = "oom"  # maxmemory reached and the policy evicts nothing (or not enough)
    NOAUTH = "noauth"  # not authenticated, or the credentials are wrong
    MISCONF = "misconf"  # writes stopped by the server (failed RDB save)
    READONLY = "readonly"  # a replica: the primary moved (failover)
    LOADING = "loading"  # the server is loading its dataset
    BUSY = "busy"  # a script is running
    REDIRECT = "redirect"  # MOVED / ASK: a cluster slot is elsewhere
    TRYAGAIN = "tryagain"  # a cluster slot is migrating
    CLUSTERDOWN = "clusterdown"
    NOSCRIPT = "noscript"  # the script cache was emptied (a restart): sent again in full
    MASTERDOWN = "masterdown"
    NOREPLICAS = "noreplicas"  # min-replicas-to-write not met
    WRONGTYPE = "wrongtype"  # a key holds another type than the command's (written by hand)
    SCRIPT = "script"  # a script failed on what a key holds (a field that is not a number)
    OTHER = "other"


_BY_CODE = {
    "NOPERM": ErrorKind.NOPERM,
    "OOM": ErrorKind.OOM,
    "NOAUTH": ErrorKind.NOAUTH,
    "WRONGPASS": ErrorKind.NOAUTH,
    "MISCONF": ErrorKind.MISCONF,
    "READONLY": ErrorKind.READONLY,
    "LOADING": ErrorKind.LOADING,
    "BUSY": ErrorKind.BUSY,
    "MOVED": ErrorKind.REDIRECT,
    "ASK": ErrorKind.REDIRECT,
    "TRYAGAIN": ErrorKind.TRYAGAIN,
    "CLUSTERDOWN": ErrorKind.CLUSTERDOWN,
    "MASTERDOWN": ErrorKind.MASTERDOWN,
    "NOREPLICAS": ErrorKind.NOREPLICAS,
    "NOSCRIPT": ErrorKind.NOSCRIPT,
    "WRONGTYPE": ErrorKind.WRONGTYPE,
}

# What passes without anyone acting: retried. Everything else, unknown codes
# included, is given up on: an unknown error retried forever is the stall this
# module exists to prevent, and a drop is at least counted.
RETRYABLE = frozenset(
    {
        ErrorKind.READONLY,
        ErrorKind.LOADING,
        ErrorKind.BUSY,
        ErrorKind.REDIRECT,
        ErrorKind.TRYAGAIN,
        ErrorKind.CLUSTERDOWN,
        ErrorKind.MASTERDOWN,
        ErrorKind.NOREPLICAS,
        ErrorKind.NOSCRIPT,
    }
)


def error_code(error: object) -> str:
    """The reply's error code (``NOPERM``, ``OOM``...): redis-py's ``status_code``
    where it kept one, else the first word of the text."""
    code = getattr(error, "status_code", None)
    if isinstance(code, str) and code:
        return code.upper()
    words = str(error).split(maxsplit=1)
    return words[0].upper() if words else ""


# How Redis words an ACL refusal of a command a script calls (Redis 7: the script's
# error comes back as ERR, not NOPERM).
_SCRIPT_NOPERM = "the user executing the script can't run this command"
# What Redis 7 adds to an error raised while a script ran (``... script: <sha>, on
# @user_script:<line>.``): a Lua error on a value read, or an ERR of a command it called.
_IN_SCRIPT = "@user_script:"

# Refusals about the keys of the one command refused: its message is lost, the rest
# of the node's traffic is not touched (no readiness change, nothing sent again).
KEY_REFUSALS = frozenset({ErrorKind.WRONGTYPE, ErrorKind.SCRIPT})


def classify(error: object) -> ErrorKind:
    """What kind of error reply ``error`` is (an exception, or its text)."""
    kind = _BY_CODE.get(error_code(error), ErrorKind.OTHER)
    if kind is ErrorKind.OTHER:
        text = str(error)
        if _SCRIPT_NOPERM in text.lower():
            return ErrorKind.NOPERM
        if _IN_SCRIPT in text:
            return ErrorKind.SCRIPT
    return kind


def is_key_refusal(error: object) -> bool:
    """True when the refusal is about what the command's own keys hold (see
    ``KEY_REFUSALS``): the same command fails again, other commands do not."""
    return classify(error) in KEY_REFUSALS


def is_redirect(error: object) -> bool:
    """True for ``MOVED`` and ``ASK``: the command's slot is served elsewhere."""
    return classify(error) is ErrorKind.REDIRECT


def redirect_slot(error: object) -> int:
    """The slot a ``MOVED`` or ``ASK`` reply names (``MOVED 6872 10.0.0.2:6379``; redis-py
    strips the code)."""
    words = str(error).split()
    return int(words[1] if words[0].upper() in ("MOVED", "ASK") else words[0])


def is_retryable(error: object) -> bool:
    """True when the same command may succeed later without anyone acting."""
    return classify(error) in RETRYABLE


def describe(error: object) -> str:
    """The reply as Redis sent it, code first (redis-py strips the code), for logs."""
    text = str(error)
    code = getattr(error, "status_code", None)
    if isinstance(code, str) and code and not text.startswith(code):
        return f"{code} {text}"
    return text


# The error codes a subscription connection meets that redis-py raises as a class of
# its own; the listener tells a refusal from an outage by these.
_REDIS_PY_CLASSES: dict[str, type[RedisError]] = {
    "NOPERM": NoPermissionError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
}


def as_redis_error(error: object) -> RedisError:
    """An error reply as redis-py raises it: its class by the code, the code moved
    from the text to ``status_code``. A refusal met on a raw connection then reads in
    the log as it did on redis-py's (``NoPermissionError: this user has no...``)."""
    text = str(error)
    code = error_code(error)
    cls = _REDIS_PY_CLASSES.get(code)
    if cls is None:
        return ResponseError(text, status_code=code or None)
    return cls(text.removeprefix(code).lstrip(), status_code=code)


class BrokerRefused(ConnectionError):
    """Redis is reachable but answered a command with an error reply.

    A ConnectionError, so every caller that already copes with an unreachable
    broker (refuses the handshake, closes with 1013, retries on the next pass) does
    the same here; callers that can say more (metrics, readiness) catch it first.

    Args:
        error: The error reply (an exception or its text).
    """

    def __init__(self, error: object) -> None:
        # Kept as redis-py does, so classify() and describe() read it like the reply.
        self.status_code = error_code(error)
        self.kind = classify(error)
        super().__init__(describe(error))
