"""Log lines as JSON objects (settings.LOG_FORMAT = "json", the default without DEBUG).

One object per line: `timestamp` (UTC, ISO 8601), `level`, `logger`, `message`, `exception`
(the formatted traceback, when there is one), any `extra` fields of the record, and:
- `request_id`: the correlation id of the request being served (the same id its audit rows
  carry, audit/context.py), so a log line leads to the audit trail and back;
- `task_id` and `task`: in a Celery task, the task's id and name.

python-json-logger does the encoding; values it cannot encode are written as their str().
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from celery import current_task
from pythonjsonlogger.json import JsonFormatter

from audit.context import active_context

FIELDS = ["levelname", "name", "message"]
RENAMED = {"levelname": "level", "name": "logger", "exc_info": "exception"}


class ConsoleJsonFormatter(JsonFormatter):
    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        fields = dict(log_data)  # the timestamp first, for people reading the raw lines
        log_data.clear()
        log_data["timestamp"] = fields.pop("timestamp", None)
        log_data.update(fields)
        context = active_context()
        if context is not None:
            log_data["request_id"] = str(context.correlation_id)
        task = current_task  # a proxy: falsy outside a task
        if task and getattr(task.request, "id", None):
            log_data["task_id"] = task.request.id
            log_data["task"] = task.name


def json_formatter() -> ConsoleJsonFormatter:
    """The formatter of settings.LOGGING's "json" entry (and of Celery's handlers, celery.py)."""
    return ConsoleJsonFormatter(FIELDS, rename_fields=RENAMED, timestamp=True, json_ensure_ascii=False)


def configure(config: dict[str, Any]) -> None:
    """settings.LOGGING_CONFIG: dictConfig, and Python's warnings through logging (logger
    `py.warnings`), so that with JSON logs every line on stderr is a JSON object."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
