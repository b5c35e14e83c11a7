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
        entry = {"ts": timestamp(record.created), "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json_line(entry)


def json_line(entry: dict) -> str:
    try:
        # orjson: there is one access line per request, and json.dumps was most of the time formatting one took
        return orjson.dumps(entry, default=str).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits, a path with a lone surrogate
        return json.dumps(entry, default=str)


_second = (-1, "")  # the last whole second formatted, and its text: lines within one second share it


def timestamp(t: float) -> str:
    """``t`` (seconds since the epoch) as ISO 8601 UTC to the millisecond, as every line's ``ts``."""
    global _second
    whole = int(t)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((t - whole) * 1000):03d}Z"


def access_line(method: str, path: str, status: int, client: str, bytes_sent: int, duration_ms: float) -> None:
    """Log one request in the access log, as ``logging`` would with these fields as extras.

    Where the access logger's lines go to the server's own handler (``configure_logging``), the line is
    formatted here and handed to it, without a LogRecord: building and handling a record is a share of a
    small request's event-loop CPU worth saving (README, "Where the time went").
    Anywhere else (the app run by another ASGI server, a test's logging), it is an ordinary record.
    """
    if not _access.isEnabledFor(logging.INFO):
        return
    msg = f"{method} {path} {status}"
    fields = {"client": client, "method": method, "path": path, "status": status, "bytes_sent": bytes_sent, "duration_ms": duration_ms}
    if not _reaches_only_server_handler(_access):
        _access.info(msg, extra=fields)
        return
    _server_handler.add(json_line({"ts": timestamp(time.time()), "level": "info", "logger": ACCESS_LOGGER, "msg": msg, **fields}))


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
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise into the caller
            self.handleError(record)
            return
        self._queue(line)

    def add(self, line: str) -> None:
        """Write a line formatted elsewhere, as a record's would be."""
        with self.lock:
            self._queue(line)

    def _queue(self, line: str) -> None:
        self._lines.append(line)
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


_access = logging.getLogger(ACCESS_LOGGER)
_server_handler: TurnBufferedHandler | None = None  # configure_logging's


def _reaches_only_server_handler(logger: logging.Logger) -> bool:
    """Whether a record of ``logger`` would reach the server's handler alone, through no filter."""
    while logger is not None:
        if logger.filters:
            return False
        if logger.handlers:
            return logger.handlers == [_server_handler] and not logger.propagate and not _server_handler.filters
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def configure_logging(level: str) -> None:
    global _server_handler
    # Thread and process names: the JSON lines carry none of them (the logging HOWTO's "Optimization"; the
    # access lines, the many, are no records at all).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = TurnBufferedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("elunet", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    _server_handler = handler
