"""Structured logs: one JSON object per line, with the request, tenant and job ids of the
work in progress (context variables), so an operator can follow one request or one job
across processes. Secrets are never put in log records: no headers, no bodies."""

from __future__ import annotations

import json
import logging
import os
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


# The scheduler's own tasks, due every second or few: Celery's per-task lines about them
# (beat sending, the worker receiving, succeeding) are debug detail, not a day's
# hundreds of thousands of INFO lines. Their failures stay at WARNING and above.
TICK_TASKS = ("loramill.dispatch", "loramill.sweep")
_TASK_LOGGERS = ("celery.beat", "celery.app.trace", "celery.worker.strategy",
                 "celery.worker.request")


class TickLines(logging.Filter):
    """Demotes Celery's INFO lines about the scheduler's tick tasks to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno == logging.INFO and record.name in _TASK_LOGGERS
                and any(name in record.getMessage() for name in TICK_TASKS)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def quiet_libraries() -> None:
    """No progress bars on stderr (they are not log lines: a worker's log stays JSON) and
    Python warnings routed into the JSON log instead of printed. Call it before the ML
    libraries are imported: tqdm and huggingface_hub read these once, at import."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger
    try:  # Celery's few direct prints (e.g. "worker: Warm shutdown") as log lines
        import celery.apps.worker as celery_worker

        def say(msg: str, f: object = None) -> None:
            # called from signal handlers: one os.write, as Celery's own, no logging locks
            line = json.dumps({"ts": datetime.now(UTC).isoformat(), "level": "info",
                               "logger": "celery.worker", "message": msg.strip()})
            os.write(2, (line + "\n").encode())

        celery_worker.safe_say = say
    except ImportError:  # not a Celery process's environment
        pass


def configure(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the root logger (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    quiet_libraries()
    handler = logging.StreamHandler(sys.__stderr__)  # not a test runner's capture
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TickLines())
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # theirs, as JSON too
        server_log = logging.getLogger(name)
        server_log.handlers, server_log.propagate = [], True
