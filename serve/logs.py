"""Structured logs: one JSON object per line, for the server's own and its access log."""

from __future__ import annotations

import json
import logging
import sys
import time

import orjson

ACCESS_LOGGER = "elunet.serve.access"
# Attributes every LogRecord has; anything else was passed with extra= and goes into the JSON.
# (uvicorn adds color_message, an ANSI-coloured copy of msg.)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        try:
            # orjson: one access line per request, and json.dumps took most of its formatting time (6 of 9 us)
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits
            return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("elunet", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
