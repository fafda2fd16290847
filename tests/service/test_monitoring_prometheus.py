"""A real Prometheus (Debian's package) scraping a real 2-worker service with the shipped rules: every metric the
rules and the dashboard read exists in the live /metrics, every dashboard query is valid PromQL, and the drift
alert stays silent on normal traffic and fires after shifted traffic. The test's copy of the rules has every
`for:` at 0 s and Prometheus scrapes and evaluates every second; the expressions are the shipped ones."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.deploy.monitoring_files import RULE_FILES, dashboard_expressions, recorded_names, used_names
from tests.deploy.tools import find_tool
from tests.service import monitored
from tests.service.servers import free_port, running_server

pytestmark = pytest.mark.e2e
WINDOW = 300
DRIFT = "AutoencoderScoreDrift"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    models = monitored.trained_once(tmp_path_factory.getbasetemp())
    log = tmp_path_factory.mktemp("logs") / "server.log"
    env = {"AE_MONITOR_WINDOW": str(WINDOW)}
    with running_server(models, log, "--workers", "2", env=env) as client:
        yield client


def fast_rules(folder: Path) -> list[Path]:
    """The shipped rule files with every alert's `for:` at 0 s and every group evaluated each second."""
    copies = []
    for path in RULE_FILES:
        content = yaml.safe_load(path.read_text())
        for group in content["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "0s"
        copy = folder / path.name
        copy.write_text(yaml.safe_dump(content))
        copies.append(copy)
    return copies


@pytest.fixture(scope="module")
def prometheus(service: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("prometheus")
    target = str(service.base_url).removeprefix("http://").rstrip("/")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(path) for path in fast_rules(folder)],
        "scrape_configs": [{"job_name": "autoencoder", "static_configs": [{"targets": [target]}]}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        find_tool("prometheus", "install Debian's prometheus package (make system-deps)"),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_for(lambda: _ready(client), 30, "Prometheus to start", folder / "prometheus.log")
            yield client
    finally:
        process.terminate()
        process.wait(timeout=20)


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition: Callable[[], Any], within: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.25)
    pytest.fail(f"waited {within} s for {what}" + (f":\n{log.read_text()}" if log else ""))


def query(prometheus: httpx.Client, promql: str) -> list[dict[str, Any]]:
    answer = prometheus.get("/api/v1/query", params={"query": promql}).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def drift_alerts(prometheus: httpx.Client) -> list[dict[str, Any]]:
    alerts = prometheus.get("/api/v1/alerts").json()["data"]["alerts"]
    return [alert for alert in alerts if alert["labels"]["alertname"] == DRIFT]


def wait_for_evaluations(prometheus: httpx.Client, count: int) -> None:
    """Waits until the alert group has been evaluated `count` more times."""

    def last() -> str:
        groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
        return next(group["lastEvaluation"] for group in groups if group["name"] == "autoencoder.alerts")

    seen = [last()]

    def enough() -> bool:
        if (now := last()) != seen[-1]:
            seen.append(now)
        return len(seen) > count

    wait_for(enough, 30, f"{count} evaluations of the alert rules")


def send(client: httpx.Client, model: str, rows: np.ndarray) -> None:
    for chunk in np.array_split(rows, max(1, len(rows) // 20)):
        response = client.post(
            f"/models/{model}/score", json={"inputs": chunk.tolist()}, headers={"Connection": "close"}
        )
        assert response.status_code == 200, response.text


def test_every_metric_the_rules_and_the_dashboard_read_is_exported(service: httpx.Client) -> None:
    send(service, "sensor", monitored.table_rows(40, seed=9))
    assert service.post("/models/nope/score", json={"inputs": [[1.0]]}).status_code == 404  # an error series
    exported = set(re.findall(r"^(ae_[a-z0-9_]+)[{ ]", service.get("/metrics").text, flags=re.MULTILINE))
    metrics, recorded = used_names()
    assert metrics - exported == set()
    assert recorded <= recorded_names()


def test_dashboard_queries_are_valid_promql(prometheus: httpx.Client) -> None:
    for expression in dashboard_expressions():
        promql = expression.replace("$job", ".*").replace("$model", ".*").replace("$__range", "5m")
        query(prometheus, promql)  # Prometheus refuses an expression it cannot parse with status error


def test_the_drift_alert_is_silent_on_normal_traffic_and_fires_after_shifted(
    service: httpx.Client, prometheus: httpx.Client
) -> None:
    send(service, "sensor", monitored.table_rows(WINDOW, seed=1))
    ok = 'ae_monitor_status{model="sensor", version="1"} == 0'
    wait_for(lambda: query(prometheus, ok), 60, "Prometheus to scrape status ok")
    # Several evaluations of the alert group with the ok status scraped: nothing pending, nothing firing.
    wait_for_evaluations(prometheus, 3)
    assert drift_alerts(prometheus) == []

    send(service, "sensor", monitored.scaled_feature(monitored.table_rows(WINDOW, seed=2)))
    firing = wait_for(
        lambda: [alert for alert in drift_alerts(prometheus) if alert["state"] == "firing"], 60, "the drift alert"
    )
    assert [(alert["labels"]["model"], alert["labels"]["version"]) for alert in firing] == [("sensor", "1")]
    assert firing[0]["labels"]["severity"] == "warning"
