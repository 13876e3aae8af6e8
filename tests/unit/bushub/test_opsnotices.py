"""What a node makes of operators' notices (bushub.opsnotices), on a fake clock."""

from bushub.opsnotices import NOTICE_LIFETIME, Watched, tap_notice, watch_notice


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_tap_holds_for_its_lifetime_unless_renewed() -> None:
    clock = Clock()
    watched = Watched(clock)
    assert not watched.tapped
    watched.heard(tap_notice("worker"))
    assert watched.is_tapped("worker") and not watched.is_tapped("other")
    clock.now += NOTICE_LIFETIME - 1
    watched.heard(tap_notice("worker"))  # renewed
    clock.now += NOTICE_LIFETIME - 1
    assert watched.is_tapped("worker")
    clock.now += 2
    assert not watched.is_tapped("worker")
    assert not watched.tapped  # forgotten, so the relay's test is false again


def test_expire_forgets_lapsed_taps_of_quiet_agents() -> None:
    clock = Clock()
    watched = Watched(clock)
    watched.heard(tap_notice("a"))
    clock.now += 1
    watched.heard(tap_notice("b"))
    clock.now += NOTICE_LIFETIME - 0.5
    watched.expire()
    assert list(watched.tapped) == ["b"]


def test_the_console_is_watched_while_its_notice_holds() -> None:
    clock = Clock()
    watched = Watched(clock)
    assert not watched.console_watching
    watched.heard(watch_notice())
    assert watched.console_watching and not watched.tapped
    clock.now += NOTICE_LIFETIME + 0.1
    assert not watched.console_watching


def test_unreadable_notices_are_ignored() -> None:
    watched = Watched(Clock())
    for bad in (b"", b"{", b"[]", b'{"tap": 5, "for": 1}', b'{"tap": "a"}', b'{"watch": "x"}',
                b'{"tap": "", "for": 1}', b"null"):  # fmt: skip
        watched.heard(bad)
    assert not watched.tapped and not watched.console_watching


def test_a_notice_cannot_hold_a_tap_open_for_long() -> None:
    clock = Clock()
    watched = Watched(clock)
    watched.heard(b'{"tap": "a", "for": 1e12}')
    clock.now += 61
    assert not watched.is_tapped("a")
