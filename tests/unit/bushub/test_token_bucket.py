"""The per-socket budgets: what a refusal spends, and how long a wait is. Rates are
slow (a token per 100 s) so that the test's own pace does not refill anything."""

import math
from types import SimpleNamespace

import pytest

from bushub import limits
from bushub.limits import LEAST_WAIT, TokenBucket, take_or_wait

SLOW = 0.01  # tokens per second


def test_a_refusal_for_bytes_spends_no_message() -> None:
    messages, size_bytes = TokenBucket(SLOW, 2.0), TokenBucket(SLOW, 1000.0)
    assert take_or_wait(messages, size_bytes, 900) == 0.0
    # The bytes are short: nothing is spent, so one message is still there.
    assert take_or_wait(messages, size_bytes, 900) == pytest.approx(800 / SLOW, rel=0.01)
    assert messages.take_or_wait(1.0) == 0.0, "the refused one spent no message"
    assert messages.take_or_wait(1.0) == pytest.approx(1 / SLOW, rel=0.01)


def test_the_wait_is_the_time_the_refill_takes() -> None:
    bucket = TokenBucket(SLOW, 10.0)
    assert bucket.take_or_wait(9.0) == 0.0
    assert bucket.take_or_wait(5.0) == pytest.approx(4 / SLOW, rel=0.01)
    assert bucket.take_or_wait(5.0) == pytest.approx(4 / SLOW, rel=0.01), "nothing spent"
    assert bucket.take_or_wait(11.0) == math.inf, "over the burst: never"
    assert TokenBucket(0).take_or_wait(10**9) == 0.0, "a rate of 0 is no limit"
    assert not bucket.take(5.0) and bucket.take(1.0)


def test_a_wait_shorter_than_a_timer_can_sleep_is_asked_as_the_least_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop's timers count whole milliseconds: told to wait 0.5 ms, a socket's frame
    was tried again at once, ~150 times a frame, the node's loop at a full core. The
    clock stands still here: at these rates a stall of the machine between two calls
    (0.5 ms) refilled the token the test is about."""
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    messages, size_bytes = TokenBucket(2000.0, 1.0), TokenBucket(0)
    assert take_or_wait(messages, size_bytes, 10) == 0.0
    wait = take_or_wait(messages, size_bytes, 10)
    assert wait == LEAST_WAIT > 1 / 2000.0
    few_bytes = TokenBucket(1_000_000.0, 100.0)
    assert take_or_wait(TokenBucket(0), few_bytes, 100) == 0.0
    assert take_or_wait(TokenBucket(0), few_bytes, 100) == LEAST_WAIT


def test_what_is_spent_regardless_is_a_debt_waited_for() -> None:
    # A ping is answered before it is counted: it cannot be refused, only waited for.
    bucket = TokenBucket(SLOW, 3.0)
    assert bucket.spend() == 0.0 and bucket.spend() == 0.0, "two of three: one left"
    assert bucket.spend() == pytest.approx(1 / SLOW, rel=0.01), "none left: one to wait for"
    assert bucket.spend(2.0) == pytest.approx(3 / SLOW, rel=0.01), "two more owed"
    assert bucket.seconds_until_one() == pytest.approx(3 / SLOW, rel=0.01)
    assert bucket.take_or_wait(1.0) == pytest.approx(3 / SLOW, rel=0.01), "the debt first"
    assert TokenBucket(0).spend(10**9) == 0.0, "a rate of 0 is no limit"
