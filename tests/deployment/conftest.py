"""Failing deployment tests attach the tails of their processes' logs to the report,
through the integration suite's hook (imported, so that it runs here too)."""

from pathlib import Path

import pytest

from tests.integration.conftest import _register_log, pytest_runtest_makereport

__all__ = ["pytest_runtest_makereport", "register_log"]


def register_log(request: pytest.FixtureRequest, title: str, path: Path) -> None:
    """Attach ``path``'s tail to the report if the test fails."""
    _register_log(request, title, path)
