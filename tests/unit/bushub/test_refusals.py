"""Which Redis error replies a retry can fix: read from hiredis replies (the raw
publish connection, code in the text) and redis-py's typed errors (code stripped
from the text, kept in ``status_code``) alike."""

import hiredis
import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import ClusterDownError, ClusterError, RedisClusterException, ResponseError

from bushub.broker.redis import unreachable_as_connection_error
from bushub.broker.refusals import (
    BrokerRefused,
    ErrorKind,
    as_redis_error,
    classify,
    describe,
    error_code,
    is_key_refusal,
    is_retryable,
)

# Replies as Redis 7 sends them (taken from a redis-server: ACL, maxmemory, cluster).
NOPERM = "NOPERM this user has no permissions to run the 'publish' command"
NOPERM_CHANNEL = (
    "NOPERM this user has no permissions to access one of the channels used as arguments"
)
OOM_SCRIPT = (
    "OOM command not allowed when used memory > 'maxmemory'. "
    "script: d8f2fad9f8e86a53d2a6ebd960b33c4972cacc37, on @user_script:1."
)
# A script's command on a key of another type, and a script failing on a value it read
# (a hash field that is not a number), as Redis 7.0 answers them.
WRONGTYPE_SCRIPT = (
    "WRONGTYPE Operation against a key holding the wrong kind of value "
    "script: 0afd6381b7bc7e087629b058a114888865e2f312, on @user_script:1."
)
NOT_AN_INTEGER_SCRIPT = (
    "ERR hash value is not an integer "
    "script: 29e65c029b3529631bce2de243fec2510e7a819d, on @user_script:1."
)
ARITHMETIC_SCRIPT = (
    "ERR user_script:1: attempt to perform arithmetic on a nil value "
    "script: 34bb53009f9ed8304c65e4fd106bf66c983600a1, on @user_script:1."
)

CASES = [
    (NOPERM, ErrorKind.NOPERM, False),
    (NOPERM_CHANNEL, ErrorKind.NOPERM, False),
    ("OOM command not allowed when used memory > 'maxmemory'.", ErrorKind.OOM, False),
    (OOM_SCRIPT, ErrorKind.OOM, False),
    ("NOAUTH Authentication required.", ErrorKind.NOAUTH, False),
    ("WRONGPASS invalid username-password pair or user is disabled.", ErrorKind.NOAUTH, False),
    ("MISCONF Redis is configured to save RDB snapshots, but ...", ErrorKind.MISCONF, False),
    ("ERR unknown command 'SPUBLISH'", ErrorKind.OTHER, False),
    ("WEIRD something new", ErrorKind.OTHER, False),
    ("READONLY You can't write against a read only replica.", ErrorKind.READONLY, True),
    ("LOADING Redis is loading the dataset in memory", ErrorKind.LOADING, True),
    ("BUSY Redis is busy running a script.", ErrorKind.BUSY, True),
    ("MOVED 3999 127.0.0.1:6381", ErrorKind.REDIRECT, True),
    ("ASK 3999 127.0.0.1:6381", ErrorKind.REDIRECT, True),
    ("TRYAGAIN Multiple keys request during rehashing of slot", ErrorKind.TRYAGAIN, True),
    ("CLUSTERDOWN The cluster is down", ErrorKind.CLUSTERDOWN, True),
    ("MASTERDOWN Link with MASTER is down", ErrorKind.MASTERDOWN, True),
    ("NOREPLICAS Not enough good replicas to write.", ErrorKind.NOREPLICAS, True),
    (WRONGTYPE_SCRIPT, ErrorKind.WRONGTYPE, False),
    (NOT_AN_INTEGER_SCRIPT, ErrorKind.SCRIPT, False),
    (ARITHMETIC_SCRIPT, ErrorKind.SCRIPT, False),
]


@pytest.mark.parametrize(("reply", "kind", "retryable"), CASES)
def test_a_hiredis_reply_is_classified_by_its_code(
    reply: str, kind: ErrorKind, retryable: bool
) -> None:
    # What the raw publish connection's reader hands over for an error reply.
    reader = hiredis.Reader(replyError=hiredis.ReplyError)
    reader.feed(b"-" + reply.encode() + b"\r\n")
    error = reader.gets()
    assert isinstance(error, hiredis.ReplyError)
    assert classify(error) is kind
    assert is_retryable(error) is retryable
    assert describe(error) == reply


@pytest.mark.parametrize(("reply", "kind", "retryable"), CASES)
def test_a_redis_py_error_is_classified_like_the_reply_it_came_from(
    reply: str, kind: ErrorKind, retryable: bool
) -> None:
    # redis-py's own parsing: NoPermissionError, OutOfMemoryError... with the code
    # cut from the text, or a plain ResponseError that keeps it.
    error = BaseParser.parse_error(reply)
    assert classify(error) is kind
    assert is_retryable(error) is retryable
    assert describe(error) == reply


def test_redis_py_strips_the_code_that_classification_needs() -> None:
    # Why error_code() reads status_code first: the text alone says nothing.
    error = BaseParser.parse_error(NOPERM)
    assert isinstance(error, ResponseError) and not str(error).startswith("NOPERM")
    assert classify(str(error)) is ErrorKind.OTHER
    assert classify(error) is ErrorKind.NOPERM


@pytest.mark.parametrize(
    "reply",
    [
        NOPERM,
        "WRONGPASS invalid username-password pair or user is disabled.",
        "NOAUTH Authentication required.",
    ],
)
def test_a_raw_refusal_reads_as_redis_py_raises_it(reply: str) -> None:
    # A subscription refused on the raw connection is logged as on redis-py's.
    reader = hiredis.Reader(replyError=hiredis.ReplyError)
    reader.feed(b"-" + reply.encode() + b"\r\n")
    error = as_redis_error(reader.gets())
    expected = BaseParser.parse_error(reply)
    assert type(error) is type(expected)
    assert f"{type(error).__name__}: {error}" == f"{type(expected).__name__}: {expected}"
    assert classify(error) is classify(expected) and describe(error) == reply


def test_other_raw_error_replies_read_as_a_response_error_with_their_code() -> None:
    error = as_redis_error(hiredis.ReplyError("MOVED 3999 127.0.0.1:6381"))
    assert type(error) is ResponseError and str(error) == "MOVED 3999 127.0.0.1:6381"
    assert classify(error) is ErrorKind.REDIRECT


def test_text_without_a_code_is_other_and_given_up_on() -> None:
    assert error_code("") == ""
    assert classify("") is ErrorKind.OTHER
    assert not is_retryable("something went wrong")


def test_broker_refused_is_a_connection_error_that_keeps_the_reply() -> None:
    refusal = BrokerRefused(BaseParser.parse_error(OOM_SCRIPT))
    # Callers that handle an unreachable broker handle this too (1013, 503, retry).
    assert isinstance(refusal, ConnectionError)
    assert refusal.kind is ErrorKind.OOM
    assert str(refusal) == OOM_SCRIPT
    # Read again, it is still the same reply (BrokerHealth classifies what it catches).
    assert classify(refusal) is ErrorKind.OOM
    assert describe(refusal) == OOM_SCRIPT


@pytest.mark.parametrize("reply", [WRONGTYPE_SCRIPT, NOT_AN_INTEGER_SCRIPT, ARITHMETIC_SCRIPT])
def test_a_script_failing_on_what_its_keys_hold_is_that_commands_refusal(reply: str) -> None:
    assert is_key_refusal(reply)
    assert is_key_refusal(BaseParser.parse_error(reply))


@pytest.mark.parametrize(
    "reply",
    [NOPERM, OOM_SCRIPT, "ERR unknown command 'SPUBLISH'", "MOVED 3999 127.0.0.1:6381"],
)
def test_refusals_about_redis_itself_are_not_about_one_commands_keys(reply: str) -> None:
    assert not is_key_refusal(reply)


def test_a_command_a_script_may_not_run_is_a_noperm() -> None:
    error = (
        "ERR The user executing the script can't run this command or subcommand "
        "script: 695b53f7bb3c117a06ddff64461ef23bd645e4cc, on @user_script:14."
    )
    assert classify(error) is ErrorKind.NOPERM
    assert not is_retryable(error)


@pytest.mark.parametrize(
    "error",
    [
        ClusterError("TTL exhausted."),  # redirects past redis-py's retries: a slot migrating
        RedisClusterException("no node serves the slot"),
    ],
)
def test_a_cluster_changing_under_a_command_reads_as_out_of_reach(error: Exception) -> None:
    """It escaped every caller's handling (a resume answered 500, an ended socket's
    session was never released): now the ConnectionError they all handle."""
    with (
        pytest.raises(ConnectionError, match="redis cluster") as raised,
        unreachable_as_connection_error(),
    ):
        raise error
    assert not isinstance(raised.value, BrokerRefused)


def test_a_cluster_error_reply_stays_a_refusal() -> None:
    with pytest.raises(BrokerRefused), unreachable_as_connection_error():
        raise ClusterDownError("CLUSTERDOWN The cluster is down")
