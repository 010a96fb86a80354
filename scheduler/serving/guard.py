"""Bounds for the connections aiohttp serves: health, readiness, metrics and debug, on the plain health
port and on the verb port after a hand-off (verbs_http.py).

aiohttp limits a request head's size but reads a request under no deadline (its keep-alive timer starts
only after a reply) and accepts connections without a cap, so a client trickling a GET's head keeps a
connection forever and enough of them use up the file descriptors the kubelet's probes need. `Guard`
counts these connections against a cap of their own and closes one whose request has waited longer than
`server.request_timeout_seconds` for its reply. It sees both directions through thin wrappers: the
protocol's reads (a request is waiting from its first byte) and the transport's writes (a reply began).
The bytes handed to aiohttp and not yet answered are also counted over all its connections together and
held to `max_receiving` (503 past it): aiohttp bounds each request by client_max_size, but its cap of
connections times that is far more memory than a scheduler's pod has. Not on the hot path: the verbs
never go through here.
"""

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger("berth.server")


def _reply(status: int, error: bytes) -> bytes:
    """A whole reply written past aiohttp, on a connection about to close: {"error": ...} (ASCII, no quotes)."""
    body = b'{"error":"%s"}' % error
    reason = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}[status]
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n" % (status, reason)
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


CUT_SHORT = "the connection was half-closed before the request was complete"
HALF_CLOSED = _reply(400, CUT_SHORT.encode())
TOO_MANY = _reply(503, b"too many connections for health, metrics and debug; retry")
BUSY = b"server busy: requests still arriving on all connections together are over %d bytes; retry"
FLOOR = 16  # connections aiohttp may hold however low the cap: probes, a scrape and a person


# The Server field of every aiohttp reply. aiohttp's default names its version and Python's
# ("Python/3.11 aiohttp/3.14.5"): it tells any caller which published flaws to try. The verb path sends none.
SERVER = "berth"


async def _name_server(request: BaseRequest, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER  # set before aiohttp's setdefault of its own


def application(**options: Any) -> web.Application:
    """A web.Application (options as aiohttp's) whose replies name no software version: every aiohttp app
    Berth serves (the verb port's other paths, the health, webhook and node agent ports) is made here."""
    app = web.Application(**options)
    app.on_response_prepare.append(_name_server)
    return app


def guard_cap(verb_cap: int) -> int:
    """A quarter of the verb connections' cap: kube-scheduler needs the verbs; these need few."""
    return max(FLOOR, verb_cap // 4)


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    bounds: tuple[float, int, int],
    ctx: ssl.SSLContext | None = None,
    backlog: int = 1024,
) -> tuple[asyncio.Server, asyncio.Task[None]]:
    """Serve `runner` (set up) on host:port under a Guard of (request timeout, connection cap, bytes
    arriving): the server and the task that enforces the deadlines. Raises OSError when the port cannot be had."""
    assert runner.server is not None
    timeout, cap, receiving = bounds
    g = Guard(runner.server, timeout, cap, receiving)
    server = await asyncio.get_running_loop().create_server(g, host, port, ssl=ctx, backlog=backlog, reuse_address=True)
    return server, asyncio.create_task(g.sweep(), name=f"deadlines-{port}")


class Guard:
    """Shared by the aiohttp connections of one listener."""

    def __init__(
        self, fallback: Callable[[], asyncio.Protocol], request_timeout: float, cap: int, max_receiving: int
    ) -> None:
        self.fallback = fallback  # aiohttp's web.Server: a protocol factory
        self.request_timeout = request_timeout
        self.cap = cap
        self.max_receiving = max_receiving
        self.receiving = 0  # bytes handed to aiohttp with no reply begun since, over all its connections
        self.open: set[Guarded] = set()
        self.refused = 0  # connections closed at once because the cap was reached
        self.busy = 0  # connections closed with a 503 because the bytes arriving were over max_receiving

    def __call__(self) -> "Guarded":
        """Protocol factory for a listener that serves only aiohttp (the health port)."""
        return Guarded(self, self.fallback())

    def adopt(self, transport: asyncio.Transport, data: bytes, eof: bool = False) -> None:
        """Take over a verb-port connection whose first request is not a verb (`data`: its bytes so far;
        `eof`: the caller has half-closed already)."""
        guarded = Guarded(self, self.fallback())
        transport.set_protocol(guarded)
        guarded.connection_made(transport)
        if guarded.transport is not None:
            guarded.data_received(data)
            if eof and not guarded.eof_received():
                transport.close()

    def expire(self, now: float | None = None) -> None:
        """Close connections whose request has waited past the deadline (no reply begun), with a 408 saying
        so (they were closed unanswered) as the verb connections get."""
        now = time.monotonic() if now is None else now
        for conn in [c for c in self.open if c.waiting_since and now - c.waiting_since > self.request_timeout]:
            if conn.transport is not None:
                conn.transport.write(_reply(408, b"the request did not arrive within %g s" % self.request_timeout))
            conn.close()

    async def sweep(self) -> None:
        every = max(0.05, min(1.0, self.request_timeout / 4))
        while True:
            await asyncio.sleep(every)
            self.expire()

    def make_room(self) -> bool:
        """At the cap: close the connection idle longest between requests, one served before (RFC 9112 9.3:
        a server may close an idle connection; clients retry on a new one). Without this, as many kept-alive
        clients as the cap, each served once, shut every health check out until aiohttp's keep-alive expired.
        False when none is idle: connections that have sent nothing yet keep their places."""
        idle = [c for c in self.open if c.served_at and not c.waiting_since and c.between_requests()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.served_at)
        self.open.discard(oldest)
        oldest.close()
        return True

    def close_all(self) -> None:
        for conn in list(self.open):
            conn.close()


class Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, seen through: counts it, times its requests."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        if type(inner) is RequestHandler:  # what web.Server makes; JsonErrors adds no state (same slots)
            inner.__class__ = JsonErrors
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.waiting_since = 0.0  # monotonic time a request's first byte arrived with no reply begun since
        self.served_at = 0.0  # monotonic time the last reply began; 0 before the first
        self.received = 0  # what this connection adds to guard.receiving: bytes since the last reply began

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        if len(self.guard.open) >= self.guard.cap and not self.guard.make_room():
            self.guard.refused += 1
            transport.write(TOO_MANY)  # answered, not closed unanswered; nothing of it is read
            transport.close()
            return
        self.transport = transport
        self.guard.open.add(self)
        self.inner.connection_made(_Writes(transport, self))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.open.discard(self)
        self._release()
        if self.transport is not None:
            self.transport = None
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.waiting_since:
            self.waiting_since = time.monotonic()
        guard = self.guard
        if guard.receiving + len(data) > guard.max_receiving:
            self._refuse_busy()
            return
        guard.receiving += len(data)
        self.received += len(data)
        self.inner.data_received(data)

    def _refuse_busy(self) -> None:
        """The bytes arriving over every aiohttp connection would pass the bound: this one gets a 503 and is
        closed, what it held given back at once (the others are served as their requests complete)."""
        self.guard.busy += 1
        self._release()
        if self.transport is not None:
            self.transport.write(_reply(503, BUSY % self.guard.max_receiving))
            self.transport.close()

    def _release(self) -> None:
        self.guard.receiving -= self.received
        self.received = 0

    def eof_received(self) -> bool | None:
        """The caller half-closed. aiohttp's protocol then lets asyncio close the transport at once, dropping
        the replies to requests it has read in full (`printf 'GET /healthz HTTP/1.1' ... | nc -N` got
        nothing): those are answered, then the connection closes (aiohttp's own close() would drop requests
        queued behind the first). A request cut short gets 400: its head here, its body as its handler
        reads on (JsonErrors words the error)."""
        inner = self.inner
        if isinstance(inner, RequestHandler) and _has_a_request(inner):
            self._after_eof()
            return True
        if self.waiting_since and self.transport is not None:
            self.transport.write(HALF_CLOSED)
        return inner.eof_received()

    def _after_eof(self, unhandled: bool = False) -> None:
        """Until aiohttp waits for a request that cannot come, its replies written: then close. Checked each
        10 ms (aiohttp says nothing when it goes idle); the deadline (expire) bounds it like any request.
        No request queued or in a handler on two checks running (a request waits one loop turn at most for
        its handler): aiohttp reads on past a reply for a body the handler left unread (its lingering
        close, 10 s), and that body can never come now."""
        inner, transport = self.inner, self.transport
        if transport is None or not isinstance(inner, RequestHandler):
            return
        request = inner._current_request
        if request is not None and not request.content.is_eof():  # the rest of its body can never come
            request.content.set_exception(ConnectionResetError(CUT_SHORT))
            request.content.feed_eof()  # at its end: aiohttp's lingering read after the reply does not raise
        idle = not (inner._messages or inner._request_in_progress)
        if (not _has_a_request(inner) or (idle and unhandled)) and not transport.get_write_buffer_size():
            transport.close()
        else:
            asyncio.get_running_loop().call_later(0.01, self._after_eof, idle)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def replied(self) -> None:
        self.waiting_since = 0.0
        self.served_at = time.monotonic()
        self._release()  # aiohttp has read the request (or refused it): what it held is the reply's now

    def between_requests(self) -> bool:
        """aiohttp waits for the next request, its replies written: the connection is idle."""
        inner = self.inner
        return (
            isinstance(inner, RequestHandler)
            and not _has_a_request(inner)
            and self.transport is not None
            and not self.transport.get_write_buffer_size()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Writes:
    """The transport aiohttp writes to: the real one, noting that a reply has begun."""

    __slots__ = ("_owner", "_transport")

    def __init__(self, transport: asyncio.Transport, owner: Guarded) -> None:
        self._transport = transport
        self._owner = owner

    def write(self, data: Any) -> None:
        self._owner.replied()
        self._transport.write(data)

    def writelines(self, data: Any) -> None:
        self._owner.replied()
        self._transport.writelines(data)

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def _has_a_request(inner: RequestHandler) -> bool:
    """aiohttp's protocol holds a request read whole (queued, about to be handled, or in its handler); False
    while it waits for one to complete. Its own state: it has no public view of this."""
    waiter = inner._waiter  # set while start() waits for the next complete request
    if waiter is not None and not waiter.done():
        return False
    return bool(inner._messages or inner._request_in_progress or inner._request_count)


_NAMED = {hdrs.SERVER: SERVER}


class JsonErrors(RequestHandler):
    """aiohttp's protocol, answering a request it cannot parse (bad request line, header or framing) as Berth
    answers every other refusal: a JSON {"error": ...} naming what is wrong, where aiohttp writes text/plain,
    and a debug line, where aiohttp logs each one at error level with a traceback (any client could fill
    the log with tracebacks that read as crashes). Failures of Berth's own (5xx) keep aiohttp's handling."""

    __slots__ = ()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        left = isinstance(exc, ConnectionResetError)  # aiohttp hands it over as a 500
        if status >= 500 and not left:
            response = super().handle_error(request, status, exc, message)
            response.headers[hdrs.SERVER] = SERVER  # no app's hook runs for a request that failed to parse
            return response
        if request.writer.output_size > 0:  # as aiohttp: a reply has begun, none can follow (a debug line)
            raise ConnectionError("a reply has begun; no error reply can follow")
        if left:
            # The caller left, or half-closed, mid-request (http_app's middleware lets this through): nothing
            # of Berth's failed, where aiohttp logged a 500 with its traceback at error level. A 400 for a
            # caller still reading (Guarded.eof_received), written to no one when it has gone.
            log.debug("%s %s: the caller left before its reply: %s", request.method, request.path, exc)
            body = orjson.dumps({"error": CUT_SHORT if str(exc) == CUT_SHORT else f"the connection was lost: {exc}"})
            response = web.Response(body=body, status=400, content_type="application/json", headers=_NAMED)
            response.force_close()
            return response
        # aiohttp's messages quote the bytes over several lines with a caret under the fault: one line here.
        text = message or str(exc or "") or "malformed request"
        reason = " ".join(part for line in text.splitlines() if (part := line.strip()) and part.strip("^"))
        log.debug("malformed HTTP request from %s: %s", request.remote, reason)
        body = orjson.dumps({"error": f"malformed HTTP request: {reason}"})
        response = web.Response(body=body, status=status, content_type="application/json", headers=_NAMED)
        response.force_close()
        return response
