"""Logging for `tagway run`: readable lines on a terminal, one JSON object per line for journald
or a log shipper (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LogFormat = Literal["auto", "human", "json"]

CHATTY: tuple[str, ...] = ("httpx", "httpcore", "transitions", "asyncua", "aiosqlite")
"""Libraries whose INFO is one line per request or per state-machine step: an operator reading
the journal acts on none of it. They log warnings and errors as usual (and all at DEBUG)."""


def quiet_libraries(level: str) -> None:
    """At INFO and above, the chatty libraries keep to warnings."""
    quiet = logging.getLevelName(level.upper()) != logging.DEBUG
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Send logs to stderr in the chosen format (`auto`: human on a terminal, JSON otherwise)."""
    if fmt == "auto":
        fmt = "human" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"
        )
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_libraries(level)
