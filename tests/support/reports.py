"""Process logs in a failing test's report: a test registers each log it makes, and the
report hook of ``tests/conftest.py`` attaches their tails when the test fails."""

from pathlib import Path

import pytest

LOGS = pytest.StashKey[list[tuple[str, Path]]]()
LOG_TAIL_BYTES = 20_000


def register_log(request: pytest.FixtureRequest, title: str, path: Path) -> None:
    """Attach ``path``'s tail to the report if the test fails."""
    request.node.stash.setdefault(LOGS, []).append((title, path))


def attach_logs(item: pytest.Item, report: pytest.TestReport) -> None:
    for title, path in item.stash.get(LOGS, []):
        if path.exists():
            text = path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
            report.sections.append((title, text))
