"""The profile tables, from py-spy's raw (collapsed) stacks."""

import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/services/", "/libs/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path


def _parse(stacks: list[str]) -> list[tuple[list[str], int]]:
    out = []
    for line in stacks:
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            if m:
                frames.append(f"{m['func']}|{_short(m['file'])}:{m['line'] or '?'}")
            else:
                frames.append(f"{frame}|")
        out.append((frames, n))
    return out


# Leaf frames of a thread waiting for work (seen with --native, which samples idle too).
IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "select", "poll", "ppoll")


def profile_table(stacks: list[str], top: int) -> tuple[list[list[str]], int, int]:
    """Top functions by own samples, leaving out idle waits.

    Returns:
        (rows, busy samples, idle samples left out)
    """
    parsed = _parse(stacks)
    idle = sum(n for frames, n in parsed if frames and frames[-1].split("|")[0] in IDLE_LEAVES)
    parsed = [(f, n) for f, n in parsed if f and f[-1].split("|")[0] not in IDLE_LEAVES]
    total = sum(n for _, n in parsed) or 1
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in parsed:
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    rows = []
    for key, n in own.most_common(top):
        func, _, where = key.partition("|")
        rows.append(
            [f"`{func}`", f"`{where}`", f"{100 * n / total:.1f}", f"{100 * incl[key] / total:.1f}"]
        )
    return rows, sum(n for _, n in parsed), idle


_ENTRY_POINTS = ("bushub/__main__.py", "bushub/cli.py")


def project_table(stacks: list[str], top: int, prefixes=("bushub/", "buswire/")) -> list[list[str]]:
    """The project's own functions by inclusive samples (their whole subtree)."""
    parsed = [(f, n) for f, n in _parse(stacks) if f and f[-1].split("|")[0] not in IDLE_LEAVES]
    total = sum(n for _, n in parsed) or 1
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in parsed:
        own[frames[-1]] += n
        for f in set(frames):
            where = f.partition("|")[2]
            if where.startswith(prefixes) and not where.startswith(_ENTRY_POINTS):
                incl[f] += n
    rows = []
    for key, n in incl.most_common(top):
        func, _, where = key.partition("|")
        rows.append(
            [f"`{func}`", f"`{where}`", f"{100 * n / total:.1f}", f"{100 * own[key] / total:.1f}"]
        )
    return rows
