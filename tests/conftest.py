"""Every suite: a failing test's report carries the tails of the process logs it
registered (`tests.support.reports.register_log`)."""

import pytest

from tests.support.reports import attach_logs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.failed:
        attach_logs(item, report)
    return report
