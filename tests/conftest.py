"""Every suite: a failing test's report carries the tails of the process logs it
registered (`tests.support.reports.register_log`); a Redis Cluster of a test's own."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.redis_cluster import RedisClusterServers
from tests.support.reports import attach_logs


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test's own (six nodes): it may break it, change its ACLs
    or move its slots."""
    servers = RedisClusterServers(tmp_path / "rc")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.failed:
        attach_logs(item, report)
    return report
