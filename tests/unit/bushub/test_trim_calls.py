"""The trims a node writes for acknowledgements: built from a per-session head kept
between them, they must be exactly the ``TRIM`` call built from its parts."""

from hypothesis import given
from hypothesis import strategies as st

from bushub.broker import sessionscripts
from bushub.broker.sessionscripts import TRIM_SCRIPT, TrimCalls, trim_call

agents = st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s)
session_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
positions = st.integers(min_value=0, max_value=2**53)


@given(agents, session_ids, st.lists(positions, min_size=1, max_size=5))
def test_a_trim_is_the_call_built_from_its_parts(
    agent: str, session: str, acked: list[int]
) -> None:
    calls = TrimCalls()
    for position in acked:  # the head kept from the first is reused for the rest
        expected = TRIM_SCRIPT.call(*trim_call(agent, session, position), by_sha=True)
        assert calls.by_sha(agent, session, position) == expected


def test_the_heads_kept_are_bounded() -> None:
    calls = TrimCalls()
    kept = sessionscripts._PREFIXES_KEPT
    for n in range(kept + 10):
        calls.by_sha(f"agent{n}", "S1", n)
    assert len(calls._heads) <= kept
    # A session whose head was let go is built again, the same.
    assert calls.by_sha("agent0", "S1", 7) == TRIM_SCRIPT.call(
        *trim_call("agent0", "S1", 7), by_sha=True
    )
