"""deploy/monitoring: the rules pass promtool (syntax and their unit tests), the PrometheusRule carries the same
groups, the ServiceMonitor reaches the Service, the dashboard reads only series that exist or are recorded.
That the service really exports every name used is tests/service/test_monitoring_prometheus.py's job."""

from __future__ import annotations

import json
import subprocess

import kubernetes_validate
import yaml

from .monitoring_files import DASHBOARD, MONITORING, RULE_FILES, recorded_names, rule_groups, rules, used_names
from .tools import REPO, find_tool

PROMTOOL_INSTALL = "install Debian's prometheus package (make system-deps)"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    command = [find_tool("promtool", PROMTOOL_INSTALL), *args]
    return subprocess.run(command, cwd=MONITORING, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rule_files() -> None:
    assert [path.name for path in RULE_FILES] == ["alert-rules.yml", "recording-rules.yml"]
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    tests = sorted((MONITORING / "tests").glob("*.test.yml"))
    assert tests
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_the_issue_asks_for_is_shipped_and_unit_tested() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts == {
        "AutoencoderScoreDrift",
        "AutoencoderAnomalyRateFarFromExpected",
        "AutoencoderHigh5xxRate",
        "AutoencoderHighP99Latency",
        "AutoencoderOverloaded",
        "AutoencoderNoReadyModel",
    }
    tested = (MONITORING / "tests" / "alerts.test.yml").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tested
    for rule in rules():
        assert rule.get("labels", {}).get("severity", "info") in ("info", "warning", "critical")


def test_the_prometheus_rule_carries_the_rule_files_groups() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert sorted(rule["spec"]["groups"], key=lambda g: g["name"]) == sorted(rule_groups(), key=lambda g: g["name"])


def test_recorded_series_used_are_recorded() -> None:
    _, recorded = used_names()
    assert recorded
    assert recorded <= recorded_names()


def test_the_service_monitor_scrapes_the_service() -> None:
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    service = yaml.safe_load((REPO / "deploy" / "kubernetes" / "base" / "service.yaml").read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    ports = {port["name"] for port in service["spec"]["ports"]}
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["http"]
    assert "http" in ports


def test_the_kustomization_names_every_file_and_a_valid_dashboard_config_map() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).is_file()
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == [DASHBOARD.name]
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"], "labels": generator["options"]["labels"]},
        "data": {DASHBOARD.name: DASHBOARD.read_text()},
    }
    kubernetes_validate.validate(config_map, kubernetes_validate.latest_version(), strict=True)
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
