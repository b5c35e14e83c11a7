"""Structured logs: one JSON object per line, for the server's own and its access log."""

from __future__ import annotations

import asyncio
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


class TurnBufferedHandler(logging.StreamHandler):
    """A stream handler that writes the lines of one turn of the event loop with one write().

    Under load the access log emits a line per request, and a write (a system call) per line was the
    larger half of its cost on the event loop. Lines logged on the loop wait for the end of its current
    turn, no longer; a line from any other thread is written at once, after any still waiting (order
    kept). A process killed outright loses at most the lines of one turn.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            self._lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise into the caller
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
        else:
            if len(self._lines) == 1:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:
            if self._lines:
                lines, self._lines = self._lines, []
                self.stream.write("\n".join(lines) + "\n")
            super().flush()


def configure_logging(level: str) -> None:
    # Where a call was made, thread and process names: the JSON lines carry none of them, and a log
    # record spent half its time finding them (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = TurnBufferedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("elunet", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
