"""The files of deploy/monitoring and the metric names their PromQL uses, for the tests that check them
statically (tests/deploy/test_monitoring.py) and against a live service
(tests/service/test_monitoring_prometheus.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULE_FILES = sorted(MONITORING.glob("*rules*.yml"))
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Recording rules are named level:metric:operations; every metric of the service starts with ae_.
RECORDED = re.compile(r"\b[a-z_]+:ae_[a-z0-9_]+:[a-z0-9_]+\b")
METRIC = re.compile(r"\bae_[a-z0-9_]+\b")


def rule_groups() -> list[dict[str, Any]]:
    return [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def expressions() -> list[str]:
    """Every PromQL expression the rules and the dashboard evaluate, and the dashboard's variable queries."""
    variables = [v["query"] for v in json.loads(DASHBOARD.read_text())["templating"]["list"] if v["type"] == "query"]
    return [rule["expr"] for rule in rules()] + dashboard_expressions() + variables


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def used_names() -> tuple[set[str], set[str]]:
    """The service's metric names and the recording rules' names the expressions read."""
    metrics: set[str] = set()
    recorded: set[str] = set()
    for expression in expressions():
        recorded |= set(RECORDED.findall(expression))
        metrics |= set(METRIC.findall(RECORDED.sub("", expression)))
    return metrics, recorded
