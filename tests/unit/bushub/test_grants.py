"""What a token's grant holds: exact names, and globs where only ``*`` and ``?`` are
wildcards (bushub.auth)."""

import subprocess
import sys

from bushub.auth import Grant


def test_only_star_and_question_mark_are_wildcards() -> None:
    grant = Grant(agents=("voice-*", "ops-?", "job[1]", "[!a]dmin", "a.b+c"), targets=())
    for name in ("voice-1", "voice-", "ops-7", "job[1]", "[!a]dmin", "a.b+c"):
        assert grant.may_hold(name), name
    for name in ("Voice-1", "ops-12", "job1", "xdmin", "aXb+c", "a.bbc"):
        assert not grant.may_hold(name), name


def test_a_glob_of_many_stars_against_a_long_name_answers_at_once() -> None:
    """A regular expression of ``.*`` per ``*`` backtracked: ``*a*a*a*a*a*a*b``
    against 64 ``a`` took 3.4 s, against 128 (the longest name) minutes, on the
    node's event loop. Run in a process of its own, bounded, not timed: either it
    answers or it hangs (a match holds the interpreter's lock: a thread could not
    be waited for)."""
    code = (
        "from bushub.auth import Grant\n"
        "grant = Grant(agents=('*a*a*a*a*a*a*b', '*-*-*-*-*-voice'), targets=())\n"
        "print([grant.may_hold('a' * 128), grant.may_hold('-' * 80 + 'x')])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[False, False]"
