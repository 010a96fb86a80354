"""Structured logs: one JSON object per line, with pod and node where a record carries them."""

import logging
import sys
import time

import orjson

_EXTRA = ("pod", "node", "team", "verb", "reason")
# A line's parts are bounded: many carry what a request named (pod and node names, reasons quoting them),
# and a verb body of max_body_bytes could name a pod of 10 MB, logged whole twice over (msg and extra).
MSG_LIMIT = 4096
EXTRA_LIMIT = 512
ERROR_LIMIT = 64 * 1024


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _bounded(record.getMessage(), MSG_LIMIT),
        }
        for key in _EXTRA:
            if key in record.__dict__:
                value = record.__dict__[key]
                out[key] = _bounded(value, EXTRA_LIMIT) if isinstance(value, str) else value
        if record.exc_info:
            out["error"] = _bounded(self.formatException(record.exc_info), ERROR_LIMIT)
        return orjson.dumps(out, default=str).decode()  # an odd extra is text, not a lost record


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
