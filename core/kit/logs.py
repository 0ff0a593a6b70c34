"""Structured logs: one JSON object per line, with the request, tenant and job ids of the
work in progress (context variables), so an operator can follow one request or one job
across processes. Secrets are never put in log records: no headers, no bodies."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# One mutable dict per request or task: a value bound in a worker thread (FastAPI runs
# sync dependencies in a threadpool, on a copy of the context) is still seen by the
# request's other log lines, because the copies share this dict.
_fields: ContextVar[dict[str, str] | None] = ContextVar("log_fields", default=None)
FIELDS = ("request_id", "tenant_id", "job_id")


def start(**fields: str) -> object:
    """Begin a unit of work (a request, a task); returns a token for :func:`end`."""
    return _fields.set(dict(fields))


def end(token: object) -> None:
    _fields.reset(token)  # type: ignore[arg-type]


def bind(**fields: str | None) -> None:
    """Add ids to the current unit of work's log lines."""
    current = _fields.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields.get() or {})
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the root logger (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.__stderr__)  # not a test runner's capture
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # theirs, as JSON too
        server_log = logging.getLogger(name)
        server_log.handlers, server_log.propagate = [], True
