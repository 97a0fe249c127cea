"""Log lines for a person at a terminal or for a log collector: plain text by default, JSON lines on request.

``configure_logging("json", "INFO")`` makes every record one JSON object on one line of stderr::

    {"time": "2026-12-08T02:48:00.123+00:00", "level": "WARNING", "logger": "wire.reconnect",
     "message": "site depot-1: MQTT connection to 127.0.0.1:1883 failed (...)", "connection": "mqtt",
     "client": "site depot-1", "broker": "127.0.0.1:1883", "state": "down"}

- ``time``: the record's creation time, ISO 8601 in UTC, to the millisecond (a stamp, not logic: it
  is the :mod:`logging` module's own time, not a :class:`~wire.clock.Clock`'s);
- ``level``, ``logger``, ``message``: the level name, the logger's name, the formatted message;
- every field the call passed in ``extra=`` under its own name (``site_id``, ``charger_id``,
  ``command_id``, ``event_id``, ``dependency``, ``connection``, ``state``...), so a collector filters
  on them without parsing the message; a field named like one of the four above is kept as
  ``extra_<name>``;
- ``exception`` / ``stack``: the formatted traceback, when the record has one.

Values JSON cannot hold are written as text: datetimes in ISO 8601, enums by value, anything else by
``str()``. The text format is the one ``fleetgrid`` has always written (level, logger, message).

The format is chosen by ``--log-format text|json`` on ``fleetgrid gateway`` and ``fleetgrid
aggregator``, or by the environment variable :data:`LOG_FORMAT_ENV` (the option wins). This module lives
in ``wire`` because the gateway, the charger simulator and the centre may all import it; it needs only
the standard library, so it runs on the gateway's base install.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import sys
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_FORMAT_ENV = "FLEETGRID_LOG_FORMAT"
"""The environment variable that chooses the format when ``--log-format`` is not given."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
"""The plain-text line: what ``fleetgrid`` writes to a terminal."""

STANDARD_FIELDS = ("time", "level", "logger", "message")

# The attributes every LogRecord has; anything else on a record came from ``extra=`` (but for one).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
    "color_message",  # uvicorn's message again, with terminal colour codes
}


class LogSettingsError(ValueError):
    """A log format or level that is not one of those known; the message names the value and the choices."""


def log_format(value: str) -> LogFormat:
    """``value`` as a :data:`LogFormat` (case and blanks ignored), or :class:`LogSettingsError`."""
    name = value.strip().lower()
    for known in LOG_FORMATS:
        if name == known:
            return known
    raise LogSettingsError(f"unknown log format {value!r}: expected one of {', '.join(LOG_FORMATS)}")


def log_level(value: str | int) -> int:
    """``value`` (a name such as ``"info"`` or a :mod:`logging` number) as a level number."""
    if isinstance(value, int):
        return value
    name = value.strip().upper()
    if name not in LOG_LEVELS:
        raise LogSettingsError(f"unknown log level {value!r}: expected one of {', '.join(LOG_LEVELS)}")
    return int(logging.getLevelName(name))


def _json_value(value: object) -> Any:
    """A value ``json.dumps`` cannot write, as something it can."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: the fields the module docstring lists."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        line: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRIBUTES or key.startswith("_"):
                continue
            line[f"extra_{key}" if key in STANDARD_FIELDS else key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=_json_value, ensure_ascii=False)


class _FleetgridHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (told apart so a second call replaces it).

    Without a stream of its own it writes to whatever ``sys.stderr`` is when a record comes, as
    :data:`logging.lastResort` does, so a stderr swapped and closed since (a test runner's) is never
    written to.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        logging.Handler.__init__(self)
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        self._stream = value


def configure_logging(
    format: str = "text", level: str | int = "INFO", *, stream: TextIO | None = None
) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``format`` (``"text"``
    or ``"json"``).

    It replaces the root logger's stderr handler (the one :func:`logging.basicConfig` made, or one a
    previous call made) and leaves every other handler alone (a file, a test's capture). A bad format
    or level raises :class:`LogSettingsError` before anything changes.
    """
    chosen = log_format(format)
    number = log_level(level)
    formatter = JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT)
    handler = _FleetgridHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _FleetgridHandler) or (
            type(old) is logging.StreamHandler and old.stream in (sys.stderr, sys.__stderr__)
        ):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)


__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "LOG_LEVELS",
    "JsonFormatter",
    "LogFormat",
    "LogSettingsError",
    "configure_logging",
    "log_format",
    "log_level",
]
