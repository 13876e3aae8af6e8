"""The Prometheus and Grafana files in deploy/ are valid and speak of real metrics."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bushub.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")


def exported_names() -> set[str]:
    """Every series name the hub exports, histogram suffixes included (a labelled
    counter with no labels used yet has no samples: named by its family)."""
    names = set()
    for family in Metrics().registry.collect():
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def referenced_names(text: str) -> set[str]:
    return set(re.findall(r"\bbushub_[a-z_]+", text))


@pytest.mark.parametrize(
    ("command", "path"),
    [("rules", "prometheus/alerts.yml"), ("config", "prometheus/prometheus.yml")],
)
def test_promtool_accepts(command: str, path: str) -> None:
    assert PROMTOOL, "promtool is installed by `make test`"
    result = subprocess.run(
        [PROMTOOL, "check", command, str(DEPLOY / path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_as_intended(tmp_path: Path) -> None:
    """promtool's rule unit test: Redis down for a minute pages; drops of registry
    messages (consumed by design) do not alert; descriptors past 90% of the limit
    page, an unlimited node (limit 0) does not; one message refused for what its keys
    hold warns, a refusal of another kind does not."""
    assert PROMTOOL
    (tmp_path / "alerts.yml").write_text((DEPLOY / "prometheus/alerts.yml").read_text())
    (tmp_path / "test.yml").write_text(
        """
rule_files: [alerts.yml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'bushub_redis_up{instance="n1"}'
        values: '1 0x8'
      - series: 'bushub_messages_dropped_total{instance="n1",reason="registry"}'
        values: '0+1000x40'
      - series: 'bushub_open_fds{instance="n1"}'
        values: '100 950x8'
      - series: 'bushub_fd_limit{instance="n1"}'
        values: '1000x8'
      - series: 'bushub_open_fds{instance="n2"}'
        values: '950x8'
      - series: 'bushub_fd_limit{instance="n2"}'
        values: '0x8'
      - series: 'bushub_redis_errors_total{instance="n1",op="publish",kind="wrongtype"}'
        values: '0 0 1 1 1 1'
      - series: 'bushub_redis_errors_total{instance="n2",op="publish",kind="tryagain"}'
        values: '0 5 10 15 20 25'
    alert_rule_test:
      - eval_time: 2m
        alertname: BushubRedisDown
        exp_alerts:
          - exp_labels: {severity: page, instance: n1}
            exp_annotations:
              summary: "hub node n1 cannot reach its broker; publishes are being held"
      - eval_time: 10m
        alertname: BushubDropsRising
        exp_alerts: []
      - eval_time: 2m
        alertname: BushubNearFdLimit
        exp_alerts:
          - exp_labels: {severity: page, instance: n1}
            exp_annotations:
              summary: "n1 holds 95% of its file descriptors; at the limit it answers nothing"
      - eval_time: 1m
        alertname: BushubKeyRefusals
        exp_alerts:
          - exp_labels: {severity: warn, instance: n1, kind: wrongtype}
            exp_annotations:
              summary: "n1: Redis refused 1 messages in 10m for what their target's keys
                hold (wrongtype); see the node's log for the channel"
"""
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_referenced_metric_exists() -> None:
    exported = exported_names()
    for path in ("prometheus/alerts.yml", "grafana/bushub-dashboard.json"):
        missing = referenced_names((DEPLOY / path).read_text()) - exported
        assert not missing, f"{path} names metrics the hub does not export: {missing}"


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads((DEPLOY / "grafana/bushub-dashboard.json").read_text())
    assert dashboard["uid"] == "bushub"
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert all(target["expr"] for target in panel["targets"])
