"""The three error replies of the verbs: refused (a 4xx naming what is wrong), too large (413) and
failed (500, logged with its trace). Shared by the aiohttp middleware (http_app.py) and the hot-path
connection handler (verbs_http.py), so both count and word an error the same way."""

import logging

import orjson

from scheduler.config import ServerConfig
from scheduler.extender.http_framing import VERBS
from scheduler.extender.wire import WireError
from scheduler.observability.metrics import Metrics

log = logging.getLogger("berth.server")

# berth_errors_total's verb label: the verbs, explain, the verb connections' framing ("http"), and "other"
# for every other path. The aiohttp middleware names the last segment of whatever path came, and a
# label value is a series kept for the process's life: random paths with an oversized Content-Length (the
# health port takes them unauthenticated) grew the registry and /metrics without bound.
LABELS = frozenset({v.decode() for v in VERBS} | {"explain", "http"})


def label(verb: str) -> str:
    return verb if verb in LABELS else "other"


class ErrorReplies:
    def __init__(self, metrics: Metrics, server: ServerConfig) -> None:
        self.metrics = metrics
        self.server = server  # read when an error is worded: the limit as configured now

    def refused(self, verb: str, exc: WireError) -> bytes:
        self.metrics.errors.labels(label(verb), "bad_request").inc()
        return orjson.dumps({"error": exc.reason})

    def too_large(self, verb: str, detail: str) -> bytes:
        self.metrics.errors.labels(label(verb), "too_large").inc()
        return orjson.dumps(
            {
                "error": f"request body too large ({detail}); the limit is "
                f"{self.server.max_body_bytes} bytes (server.max_body_bytes)"
            }
        )

    def failed(self, verb: str, path: str, exc: BaseException | None = None) -> bytes:
        """For an unexpected exception: `exc`, or the one being handled, goes into the log with its trace."""
        log.error("unexpected error in %s", path, exc_info=exc or True)
        self.metrics.errors.labels(label(verb), "internal").inc()
        return orjson.dumps({"error": "internal error; see Berth's log"})
