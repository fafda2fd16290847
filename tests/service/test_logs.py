"""Log lines: the JSON and text formats, and a real server's traces and JSON log agreeing on a request."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from service import logs, tracing
from service.runtime import ModelRuntime
from tests.poll import wait_until
from tests.service.otlp import otlp_receiver
from tests.service.registries import CPU, package_at
from tests.service.servers import running_server

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
REQUEST_FIELDS = ["request_id", "trace_id", "protocol", "method", "path", "operation", "model", "version", "rows"]
REQUEST_FIELDS += ["status", "latency_ms", "queue_wait_ms"]


def formatted(formatter: logging.Formatter, message: str, *args: Any, **extra: Any) -> str:
    record = logging.LogRecord("service.x", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return formatter.format(record)


def test_a_json_line_is_one_object_with_time_level_logger_and_event() -> None:
    line = formatted(logs.JsonFormatter(), "model %s ready", "tab/1", fields={"model": "tab", "version": 1})
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "warning" and parsed["logger"] == "service.x" and parsed["event"] == "model tab/1 ready"
    assert parsed["time"].endswith("Z") and parsed["time"][10] == "T"
    assert (parsed["model"], parsed["version"]) == ("tab", 1)


def test_a_json_line_keeps_a_traceback_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("service.x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info())
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_lines_logged_inside_a_request_carry_its_ids() -> None:
    with tracing.request({"x-request-id": "req-9"}, "rest", "POST"):
        json_line = json.loads(formatted(logs.JsonFormatter(), "inside"))
        text_line = formatted(logs.TextFormatter(), "inside")
    assert json_line["request_id"] == "req-9" and json_line["trace_id"] is None  # tracing is off
    assert text_line.endswith("service.x: inside request_id=req-9")
    assert "request_id" not in json.loads(formatted(logs.JsonFormatter(), "outside"))


def test_the_request_line_is_written_once_a_request_ends(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="service.requests"),
        tracing.request({"x-request-id": "req-10"}, "grpc", "ModelInfer") as record,
    ):
        record.status, record.model, record.rows = "OK", "tab", 3
    [line] = [r for r in caplog.records if r.name == "service.requests"]
    fields = line.fields  # type: ignore[attr-defined]
    assert list(fields) == REQUEST_FIELDS
    assert (fields["request_id"], fields["protocol"], fields["status"], fields["rows"]) == ("req-10", "grpc", "OK", 3)
    assert fields["latency_ms"] >= 0


def test_the_configuration_sends_gunicorn_and_uvicorn_lines_through_the_service_format() -> None:
    config = logs.config("info", "json")
    for name in logs.SERVER_LOGGERS:
        assert config["loggers"][name] == {"level": "INFO", "handlers": [], "propagate": True}
    assert config["formatters"]["service"]["()"] == "service.logs.JsonFormatter"
    assert logs.config("debug", "text")["formatters"]["service"]["()"] == "service.logs.TextFormatter"


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the log, parsed: a line that is not a JSON object fails the test, naming it."""
    parsed = []
    for line in log.read_bytes().splitlines():
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


@pytest.mark.e2e
def test_a_real_server_exports_the_requests_trace_and_logs_it_as_json(models_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with otlp_receiver() as (endpoint, received):
        env = {
            "AE_LOG_FORMAT": "json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "ae-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: spans leave the worker soon after each request
        }
        with running_server(models_dir, log, "--workers", "1", env=env) as client:
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-ID": "e2e-req-1"}
            response = client.post("/models/tab/score", json={"inputs": [[3.0] * 5] * 2}, headers=headers)
            assert response.status_code == 200 and response.headers["x-request-id"] == "e2e-req-1"
            generated = client.get("/healthz").headers["x-request-id"]

            names = {"POST /models/{model}/score", "parse", "queue wait", "onnxruntime run", "encode"}
            spans = wait_until(lambda: (found := received.of_trace(TRACE_ID)) and names <= set(found) and found)
            server = spans["POST /models/{model}/score"]
            assert server["parent_span_id"] == PARENT_ID and server["resource"]["service.name"] == "ae-under-test"
            assert server["attributes"]["request.id"] == "e2e-req-1"
            assert server["attributes"]["model"] == "tab" and server["attributes"]["http.response.status_code"] == 200
            for name in names - {server["name"]}:
                assert spans[name]["parent_span_id"] == server["span_id"], name
            assert spans["onnxruntime run"]["attributes"]["rows"] == 2

            request_line = wait_until(
                lambda: [line for line in json_lines(log) if line.get("request_id") == "e2e-req-1"]
            )
    [line] = request_line
    assert line["event"] == "request" and line["trace_id"] == TRACE_ID and line["level"] == "info"
    assert (line["model"], line["version"], line["operation"], line["protocol"]) == ("tab", 2, "score", "rest")
    assert (line["rows"], line["status"], line["method"], line["path"]) == (2, 200, "POST", "/models/tab/score")
    assert line["latency_ms"] > 0 and 0 <= line["queue_wait_ms"] <= line["latency_ms"]
    assert list(line)[:5] == ["time", "level", "logger", "event", "pid"]
    # Every line is JSON, gunicorn's and uvicorn's too, from the start to the drain.
    lines = json_lines(log)
    events = [line["event"] for line in lines]
    assert any(line.get("request_id") == generated and line["status"] == 200 for line in lines)
    assert any(event.startswith("Listening at: http://") for event in events)  # gunicorn's arbiter
    assert any(event.startswith("Booting worker") for event in events)  # gunicorn's
    assert any(event.startswith("Started server process") for event in events)  # uvicorn's, in the worker
    assert any("tab/2 ready" in event for event in events)  # a model loaded
    assert any("zz-broken/1 cannot be loaded" in event for event in events)  # one that failed
    assert any(event.startswith("Finished server process") for event in events)  # drained
    assert not any('"POST /models/tab/score' in event for event in events)  # uvicorn's access line is replaced


def test_a_retired_model_logs_its_retirement_and_unloading_with_its_name_and_version(
    trained: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = ModelRuntime(package_at(trained / "tab" / "1"), CPU)
    runtime.load()
    runtime.acquire()  # a request in flight
    with caplog.at_level(logging.INFO, logger="service.runtime"):
        runtime.retire()
        runtime.release()
    lines = [json.loads(logs.JsonFormatter().format(record)) for record in caplog.records]
    assert [line["event"] for line in lines] == ["model tab/1 retired, 1 requests in flight", "model tab/1 unloaded"]
    assert all((line["model"], line["version"]) == ("tab", 1) for line in lines)


def test_text_lines_escape_what_a_client_sent(capsys: pytest.CaptureFixture[str]) -> None:
    """A path or model name with a newline cannot start a forged line; a long one is cut."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("info", "text")
    try:
        forged = "/models/x\nfake line level=ERROR/score"
        logging.getLogger("service.requests").info("request", extra=logs.fields(path=forged, model="m" * 5000))
        logging.getLogger("service.test").info("message with %s", "a\r\nb")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert 'path="/models/x\\nfake line level=ERROR/score"' in lines[0] and "(5000 characters)" in lines[0]
    assert lines[1].endswith("message with a\\r\\nb")
