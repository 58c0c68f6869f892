"""One log format for every process (server, workers, scheduler): JSON lines by default, so
that an operator's log pipeline can index them, each carrying the id of the HTTP request that
led to it. `LEDGER_LOG_FORMAT=text` gives plain lines for a terminal."""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

JSON_FIELDS = ["levelname", "name", "process", "message", "request_id"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def config(log_format: str, level: str = "INFO") -> dict:
    """A `logging.config.dictConfig` for this process; the HTTP server (granian) takes it
    too, so its own lines come out in the same form. Its access log is left out: the API
    writes one line per request itself, with the request id and the caller. JSON lines keep
    the standard library's encoder, which writes every character beyond ASCII as an escape:
    orjson writes them as they are, and a request path holding a character that Unicode
    counts as a line break (U+0085, U+2028) then splits the line for any reader that splits
    text at Unicode's line boundaries (the test that reads the server's log did)."""
    if log_format == "json":
        formatter = {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": JSON_FIELDS, "timestamp": "time",
                     "rename_fields": {"levelname": "level", "name": "logger"}}
    else:
        formatter = {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"ledger": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "ledger", "filters": ["request_id"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "_granian": {"level": "INFO", "handlers": [], "propagate": True},
            "granian.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def configure(log_format: str, level: str = "INFO") -> None:
    """Also stops gathering what no line shows (the caller's file and line, the thread's and
    the process's names), as the logging HOWTO's "Optimization" section describes: 21,000
    of a one-event post's 2.2 million instructions in the server process (callgrind)."""
    logging.config.dictConfig(config(log_format, level))
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
