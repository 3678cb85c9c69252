"""One log format for every long-running command.

Text: ``2026-11-22T01:02:03Z INFO voltana.services.router: message key=value`` (UTC, second
resolution; fields passed with ``extra={...}`` are appended as ``key=value``).
JSON: one object per line with ``ts``, ``level``, ``logger``, ``message`` and the extra fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from voltana.errors import ConfigError

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
    }
)
LEVEL_NAMES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _utc_timestamp(created_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created_s))


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


def _text_value(value: Any) -> str:
    text = str(value)
    # Quote values a reader would otherwise split wrongly.
    return json.dumps(text) if (not text or any(c in text for c in ' ="')) else text


class LogFormatter(logging.Formatter):
    """Formats records as text or JSON lines (see the module docstring)."""

    def __init__(self, *, json_lines: bool = False) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        extra = _extra_fields(record)
        error = self.formatException(record.exc_info) if record.exc_info else ""
        if self.json_lines:
            document: dict[str, Any] = {
                "ts": _utc_timestamp(record.created),
                "level": record.levelname,
                "logger": record.name,
                "message": message,
            }
            document.update({key: _jsonable(value) for key, value in extra.items()})
            if error:
                document["exception"] = error
            return json.dumps(document)
        line = f"{_utc_timestamp(record.created)} {record.levelname} {record.name}: {message}"
        if extra:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in extra.items())
        if error:
            line += "\n" + error
        return line


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name not in LEVEL_NAMES:
        raise ConfigError(f"unknown log level {level!r}; valid: {', '.join(LEVEL_NAMES)}")
    return int(getattr(logging, name))


def configure_logging(
    level: str | int = "INFO", json: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr) in one format.

    Calling it again replaces the handler it installed before (other handlers stay).
    Returns the installed handler.
    """
    numeric_level = parse_level(level)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, LogFormatter):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogFormatter(json_lines=json))
    root.addHandler(handler)
    root.setLevel(numeric_level)
    return handler
