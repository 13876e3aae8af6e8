"""Warnings are rate-limited per template, or per template and key: each agent's
session gap is logged, however many gaps come at once (``bushub.logs.RateLimitFilter``)."""

import logging

from bushub.logs import RateLimitFilter

GAP = "session of %s resumed with a gap (received %d, newest %d)"


def record(msg: str, *args: object, key: str | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("bushub.sessions", logging.WARNING, __file__, 1, msg, args, None)
    if key is not None:
        rec.rate_key = key
    return rec


def test_a_keyed_warning_is_limited_per_key() -> None:
    limit = RateLimitFilter(interval=60.0)
    passed = [limit.filter(record(GAP, agent, 5, 0, key=agent)) for agent in ("a", "b", "a")]
    assert passed == [True, True, False], "b's gap is logged though a's came just before"


def test_an_unkeyed_warning_is_limited_per_template() -> None:
    limit = RateLimitFilter(interval=60.0)
    assert limit.filter(record("redis unreachable (%s)", "refused"))
    assert not limit.filter(record("redis unreachable (%s)", "timeout"))


def test_the_keys_remembered_stay_bounded() -> None:
    limit = RateLimitFilter(interval=60.0, most_keys=100)
    for n in range(1000):
        assert limit.filter(record(GAP, n, 5, 0, key=f"agent-{n}"))
    assert len(limit._last) <= 100
