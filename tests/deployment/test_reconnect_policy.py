"""The reconnecting proxies' decisions as pure logic: retry or give up, backoff, limits,
the outbound buffer's bounds."""

import random

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI
from websockets.http11 import Response

from busclient.reconnecting import (
    GIVE_UP_CLOSE_CODES,
    RETRY_CLOSE_CODES,
    Decision,
    Disconnect,
    OutboundBuffer,
    ReconnectPolicy,
    describe_failure,
    merge_codes,
    retry_after_seconds,
)

POLICY = ReconnectPolicy()
RNG = random.Random(7)


# ---- retry or give up ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (1000, "normal close the proxy did not ask for (idle timeout, LB restart)"),
        (1001, "going away: a server shutting down"),
        (1005, "close frame without a code"),
        (1006, "no close frame: dropped connection, killed node"),
        (1011, "server error"),
        (1012, "hub draining (SIGTERM)"),
        (1013, "hub overloaded or not ready"),
        (1014, "bad gateway"),
        (4008, "hub cut a slow consumer: reconnect and keep up"),
    ],
)
def test_recoverable_closes_are_retried(code: int, why: str) -> None:
    retry, reason = POLICY.classify(Disconnect(code=code))
    assert retry, why
    assert str(code) in reason


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (4001, "a newer socket took the agent name over: reconnecting would steal it back"),
        (4002, "the peer is gone"),
        (1008, "connection parameters refused"),
        (1007, "format mismatch: the same frames would fail again"),
        (1002, "protocol error"),
        (1003, "unsupported data"),
        (1009, "message too big"),
        (1015, "TLS failure"),
        (4000, "application-defined refusal"),
        (4999, "application-defined refusal"),
        (3000, "registered application code"),
    ],
)
def test_definite_closes_give_up(code: int, why: str) -> None:
    retry, reason = POLICY.classify(Disconnect(code=code))
    assert not retry, why
    assert reason.startswith("refused")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_handshake_refusals_give_up(status: int) -> None:
    assert POLICY.classify(Disconnect(status=status)) == (False, f"refused (HTTP {status})")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_handshake_unavailability_is_retried(status: int) -> None:
    retry, _ = POLICY.classify(Disconnect(status=status))
    assert retry


def test_network_failures_are_retried() -> None:
    retry, reason = POLICY.classify(Disconnect(error="ConnectionRefusedError"))
    assert retry and reason.startswith("unreachable")


def test_a_close_the_proxy_asked_for_is_never_retried() -> None:
    # Stop/cleanup close with 1000; the receive loop then ends like any other.
    assert POLICY.classify(Disconnect(code=1000, local=True))[0] is False


def test_a_malformed_url_is_never_retried() -> None:
    assert POLICY.classify(Disconnect(error="InvalidURI", fatal=True))[0] is False


def test_code_sets_can_be_changed() -> None:
    policy = ReconnectPolicy(
        retry_codes=merge_codes(RETRY_CLOSE_CODES, add=[4002]),
        give_up_codes=merge_codes(GIVE_UP_CLOSE_CODES, remove=[4002]),
    )
    assert policy.classify(Disconnect(code=4002))[0] is True
    with pytest.raises(ValueError, match="both"):
        ReconnectPolicy(retry_codes=frozenset({4001}))


def test_handshake_failures_are_described() -> None:
    status = InvalidStatus(Response(401, "Unauthorized", Headers(), b""))
    assert describe_failure(status) == Disconnect(status=401)
    assert describe_failure(InvalidURI("http://x", "scheme isn't ws")).fatal
    refused = describe_failure(ConnectionRefusedError(111, "Connection refused"))
    assert refused.error is not None and "ConnectionRefusedError" in refused.error
    assert not refused.fatal
    assert describe_failure(TimeoutError()).error == "TimeoutError"
    assert POLICY.classify(describe_failure(InvalidMessage("did not receive a response")))[0]


# ---- backoff --------------------------------------------------------------------


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    policy = ReconnectPolicy(initial_delay=0.25, max_delay=3.0, multiplier=2.0, jitter=0.0)
    delays = [policy.delay(n, RNG) for n in range(1, 8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_jitter_stays_within_its_band() -> None:
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=8.0, jitter=0.5)
    rng = random.Random(1)
    for attempt in range(1, 7):
        ceiling = min(8.0, 2.0 ** (attempt - 1))
        for _ in range(200):
            delay = policy.delay(attempt, rng)
            assert ceiling * 0.5 < delay <= ceiling


def test_full_jitter_spreads_a_crowd() -> None:
    """Clients closed together by a draining node do not come back together."""
    policy = ReconnectPolicy(initial_delay=1.0, jitter=1.0)
    rng = random.Random(3)
    delays = sorted(policy.delay(1, rng) for _ in range(1000))
    assert 0 < delays[0] < 0.01 and 0.99 < delays[-1] <= 1.0
    # Roughly uniform: each tenth of the window gets about a tenth of the crowd.
    for tenth in range(10):
        share = sum(tenth / 10 <= d < (tenth + 1) / 10 for d in delays)
        assert 60 < share < 140


def test_jitter_is_repeatable_with_a_seeded_source() -> None:
    a = [POLICY.delay(n, random.Random(42)) for n in range(1, 5)]
    b = [POLICY.delay(n, random.Random(42)) for n in range(1, 5)]
    assert a == b


def test_a_very_long_outage_does_not_overflow() -> None:
    assert ReconnectPolicy(jitter=0).delay(100_000, RNG) == POLICY.max_delay


# ---- Retry-After --------------------------------------------------------------------


def _refused(status: int, *headers: tuple[str, str]) -> InvalidStatus:
    return InvalidStatus(Response(status, "Service Unavailable", Headers(list(headers)), b""))


def test_a_refusal_says_when_to_come_back() -> None:
    assert describe_failure(_refused(503, ("Retry-After", "1"))) == Disconnect(
        status=503, retry_after=1.0
    )
    assert describe_failure(_refused(429, ("Retry-After", " 2.5 "))).retry_after == 2.5
    assert describe_failure(_refused(503)).retry_after is None
    assert POLICY.classify(Disconnect(status=503, retry_after=1.0)) == (
        True,
        "server unavailable (HTTP 503, retry after 1s)",
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        ("86400000", 3600.0),  # a server must not park a proxy for ever
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # the date form: clocks differ
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_not_at_all(value: str, seconds: float | None) -> None:
    assert retry_after_seconds(value) == seconds


def test_the_wait_is_at_least_what_the_server_asked_and_spread() -> None:
    """Clients refused together wait at least Retry-After, up to half as long again, so
    that they do not come back together."""
    policy = ReconnectPolicy(initial_delay=0.2, max_delay=10.0, jitter=0.5)
    refused = Disconnect(status=503, retry_after=1.0)
    rng = random.Random(5)
    waits = [policy.decide(refused, 1, 0.0, rng).delay for _ in range(500)]
    assert min(waits) >= 1.0 and max(waits) <= 1.5
    assert max(waits) - min(waits) > 0.4, "spread over the band"
    # A longer backoff of its own still wins: Retry-After is a floor.
    assert policy.decide(refused, 8, 0.0, rng).delay > 1.5


def test_retry_after_stays_within_the_policys_limits() -> None:
    capped = ReconnectPolicy(initial_delay=0.1, max_delay=0.5, jitter=0.0)
    assert capped.decide(Disconnect(status=503, retry_after=30.0), 1, 0.0, RNG).delay == 0.5
    clipped = ReconnectPolicy(max_delay=10.0, max_elapsed=3.0)
    last = clipped.decide(Disconnect(status=503, retry_after=5.0), 2, 2.0, RNG)
    assert last.retry and last.delay == pytest.approx(1.0)


def test_a_refusal_without_retry_after_keeps_the_backoff() -> None:
    policy = ReconnectPolicy(initial_delay=0.2, jitter=0.0)
    assert policy.decide(Disconnect(status=503), 1, 0.0, RNG).delay == 0.2


# ---- limits -----------------------------------------------------------------------


def test_attempt_limit() -> None:
    policy = ReconnectPolicy(max_attempts=3, max_elapsed=None)
    drop = Disconnect(code=1006)
    assert [policy.decide(drop, n, 0.0, RNG).retry for n in (1, 2, 3, 4)] == [
        True,
        True,
        True,
        False,
    ]
    assert "3 attempts" in policy.decide(drop, 4, 0.0, RNG).reason


def test_time_limit_clips_the_last_wait() -> None:
    policy = ReconnectPolicy(initial_delay=5.0, max_delay=5.0, jitter=0.0, max_elapsed=10.0)
    drop = Disconnect(code=1012)
    assert policy.decide(drop, 1, 2.0, RNG) == Decision(True, "recoverable (close 1012)", 5.0)
    last = policy.decide(drop, 2, 9.5, RNG)
    assert last.retry and last.delay == pytest.approx(0.5)
    assert not policy.decide(drop, 3, 10.0, RNG).retry


def test_no_limits_retries_forever() -> None:
    policy = ReconnectPolicy(max_attempts=None, max_elapsed=None)
    assert policy.decide(Disconnect(code=1006), 10_000, 1e6, RNG).retry


def test_a_refusal_gives_up_at_once_whatever_the_limits() -> None:
    decision = ReconnectPolicy(max_attempts=None, max_elapsed=None).decide(
        Disconnect(code=4001), 1, 0.0, RNG
    )
    assert not decision.retry and decision.reason == "refused (close 4001)"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": -1},
        {"initial_delay": 5, "max_delay": 1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"max_attempts": -1},
        {"max_elapsed": -1},
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)  # type: ignore[arg-type]


# ---- the outbound buffer -------------------------------------------------------------


def test_buffer_keeps_order() -> None:
    buffer = OutboundBuffer()
    for i in range(5):
        buffer.push(b"m%d" % i, now=0.0)
    out = []
    while buffer.peek(0.0) is not None:
        out.append(buffer.pop())
    assert out == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert buffer.bytes == 0 and buffer.pushed == 5 and buffer.overflowed == 0


def test_buffer_drops_the_oldest_past_its_count_and_counts_them() -> None:
    buffer = OutboundBuffer(max_messages=3)
    dropped = [buffer.push(b"m%d" % i, 0.0) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert buffer.overflowed == 2 and len(buffer) == 3
    assert [buffer.pop() for _ in range(3)] == [b"m2", b"m3", b"m4"]


def test_buffer_bounds_bytes_too() -> None:
    buffer = OutboundBuffer(max_messages=100, max_bytes=10)
    buffer.push(b"aaaa", 0.0)
    buffer.push(b"bbbb", 0.0)
    buffer.push(b"cccc", 0.0)  # 12 bytes: the oldest goes
    assert buffer.bytes == 8 and buffer.overflowed == 1
    assert buffer.push(b"x" * 11, 0.0) == 3  # larger than the bound: nothing can stay
    assert len(buffer) == 0 and buffer.bytes == 0 and buffer.overflowed == 4


def test_buffer_expires_stale_messages() -> None:
    buffer = OutboundBuffer(max_age=1.0)
    buffer.push(b"old", now=0.0)
    buffer.push(b"new", now=5.0)
    assert buffer.peek(5.5) == b"new"
    assert buffer.expired == 1 and len(buffer) == 1


def test_buffer_clear_reports_what_it_dropped() -> None:
    buffer = OutboundBuffer()
    buffer.push(b"a", 0.0)
    buffer.push(b"b", 0.0)
    assert buffer.clear() == 2 and buffer.bytes == 0 and buffer.peek(0.0) is None
