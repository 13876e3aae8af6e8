"""The per-socket budgets: what a refusal spends, and how long a wait is."""

import math

import pytest

from bushub.limits import TokenBucket, take_or_wait


def test_a_refusal_for_bytes_spends_no_message() -> None:
    messages, size_bytes = TokenBucket(1.0), TokenBucket(100.0, 1000.0)
    assert take_or_wait(messages, size_bytes, 900) == 0.0
    # The bytes are short: nothing is spent, so the message budget is still there.
    assert take_or_wait(messages, size_bytes, 900) > 0.0
    assert messages.take_or_wait(1.0) == pytest.approx(1.0, abs=0.05)  # spent once, not twice


def test_the_wait_is_the_time_the_refill_takes() -> None:
    bucket = TokenBucket(10.0, 10.0)
    assert take_or_wait(bucket, TokenBucket(0), 1) == 0.0
    assert bucket.take_or_wait(9.0) == 0.0
    assert bucket.take_or_wait(5.0) == pytest.approx(0.5, abs=0.02)
    assert bucket.take_or_wait(5.0) == pytest.approx(0.5, abs=0.02), "nothing spent waiting"
    assert bucket.take_or_wait(11.0) == math.inf, "over the burst: never"
    assert TokenBucket(0).take_or_wait(10**9) == 0.0, "a rate of 0 is no limit"
