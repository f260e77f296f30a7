"""The process's one logging setup: level and format from --log-level/--log-format (or
DEPLOYBOT_LOG_LEVEL/DEPLOYBOT_LOG_FORMAT), to stderr, ISO-8601 UTC timestamps, the deployment's
id and ticket on every line worked on inside one, secrets redacted on every line."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator, Mapping

from bot.errors import InputError
from bot.logcontext import DeploymentFilter
from bot.redact import RedactingFilter

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
LEVEL_ENV, FORMAT_ENV = "DEPLOYBOT_LOG_LEVEL", "DEPLOYBOT_LOG_FORMAT"
# Services log what they do; one-shot commands keep the terminal to their own output.
SERVICE_COMMANDS = ("run", "scheduler")
# Their INFO lines come every tick ("Running job ... executed successfully"): shown at DEBUG only.
CHATTY = ("apscheduler",)


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exception_text(record: logging.LogRecord) -> str | None:
    # RedactingFilter leaves the redacted traceback in exc_text; never format exc_info again.
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    return record.exc_text or None


class TextFormatter(logging.Formatter):
    """2026-11-28T15:20:01.123Z INFO deploybot.pipeline [deployment 12 DEMO-1] message"""

    def format(self, record: logging.LogRecord) -> str:
        where = ""
        if getattr(record, "deployment_id", None) is not None:
            where = f" [deployment {record.deployment_id} {record.ticket}]"
        line = (f"{_timestamp(record)} {record.levelname} {record.name}{where} "
                f"{record.getMessage()}")
        text = _exception_text(record)
        return f"{line}\n{text}" if text else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"timestamp": _timestamp(record), "level": record.levelname,
               "logger": record.name, "message": record.getMessage(),
               "deployment_id": getattr(record, "deployment_id", None),
               "ticket": getattr(record, "ticket", None)}
        text = _exception_text(record)
        if text:
            out["exc_info"] = text
        return json.dumps(out, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (the CLI's redacting SafeStream, a test's
    capture), not to the stream there was at set-up."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401 - logging reads the attribute
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def choose(command: str | None, level: str | None, fmt: str | None,
           environ: Mapping[str, str]) -> tuple[str, str]:
    """(level, format): the flag, else the environment, else the command's default."""
    level = (level or environ.get(LEVEL_ENV, "").strip()
             or ("INFO" if command in SERVICE_COMMANDS else "WARNING")).upper()
    fmt = (fmt or environ.get(FORMAT_ENV, "").strip() or "text").lower()
    if level not in LEVELS:
        raise InputError(f"log level {level!r} is not one of {', '.join(LEVELS)}",
                         hint=f"--log-level or {LEVEL_ENV}")
    if fmt not in FORMATS:
        raise InputError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}",
                         hint=f"--log-format or {FORMAT_ENV}")
    return level, fmt


@contextmanager
def configured(level: str, fmt: str, redact: Callable[[str], str]) -> Iterator[logging.Handler]:
    """The root logger writes through one stderr handler while inside; the level before comes
    back after (main() runs many times in one test process)."""
    root = logging.getLogger()
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(DeploymentFilter())
    # install_log_filter() swaps this for the config's Redactor once the config is loaded.
    handler.addFilter(RedactingFilter(redact))
    previous_level = root.level
    chatty = {name: logging.getLogger(name).level for name in CHATTY}
    root.addHandler(handler)
    root.setLevel(level)
    for name in chatty:
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(previous_level)
        for name, before in chatty.items():
            logging.getLogger(name).setLevel(before)
