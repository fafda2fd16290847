"""The service's log lines, gunicorn's and uvicorn's included, in one format: text (the default, for a
terminal) or JSON (`AE_LOG_FORMAT=json`, the images' default), one object per line.

Every line has `time` (UTC, ISO 8601), `level`, `logger`, `event` (the message) and `pid`; a line logged
while a request is served carries its `request_id` and `trace_id` too. Each request ends with one line,
event `request` (service.tracing), whose fields say what it was: protocol, method, path, operation, model,
version, rows, status, latency and queue wait in milliseconds. gunicorn's and uvicorn's loggers hand their
lines to the root logger, so they come out in the same format; uvicorn's access lines are off, as the
request line replaces them."""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any, Literal

import orjson

from service import tracing

LogFormat = Literal["text", "json"]
# Loggers of the libraries that serve: their own handlers are dropped and their lines go to the root's.
SERVER_LOGGERS = ("gunicorn.error", "gunicorn.access", "uvicorn", "uvicorn.error", "uvicorn.access")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """The logging configuration (logging.config.dictConfig's schema) of the service's processes; gunicorn
    (logconfig_dict) and uvicorn (log_config) apply the same one."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "service": {"class": "logging.StreamHandler", "formatter": "service", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level, "handlers": ["service"]},
        "loggers": {name: {"level": level, "handlers": [], "propagate": True} for name in SERVER_LOGGERS},
    }


def configure(level: str, log_format: LogFormat) -> None:
    logging.config.dictConfig(config(level, log_format))


def fields(**values: Any) -> dict[str, Any]:
    """`extra` for a log call with structured fields: `logger.info("...", extra=logs.fields(model=...))`."""
    return {"fields": values}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,
        }
        line |= _request_ids()
        line |= {key: _bounded(value) for key, value in (getattr(record, "fields", None) or {}).items()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with any fields (or the request's ids) after the message as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # What a client sent (a path, a model name) must not start a line of its own: control characters
        # are escaped, and a field with spaces or quotes is quoted.
        line = super().formatMessage(record).translate(_ESCAPES)
        extra = _request_ids() | (getattr(record, "fields", None) or {})
        shown = " ".join(f"{key}={_text(value)}" for key, value in extra.items() if value is not None)
        return f"{line} {shown}" if shown else line


# Longest string field a line carries; longer ones (a 5,000-character path) are cut, with their length.
MAX_FIELD = 256
_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(32), 127]} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        return f"{value[:MAX_FIELD]}...({len(value)} characters)"
    return value


def _text(value: Any) -> str:
    shown = str(_bounded(value))
    if any(char.isspace() or char == '"' or ord(char) < 32 or ord(char) == 127 for char in shown):
        return orjson.dumps(shown).decode()  # quoted, its control characters escaped
    return shown


def _request_ids() -> dict[str, Any]:
    record = tracing.current()
    if record is None:
        return {}
    return {"request_id": record.request_id, "trace_id": record.trace_id}


def _utc(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"
