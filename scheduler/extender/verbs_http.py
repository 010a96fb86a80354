"""The hot path's own HTTP/1.1 connections: kube-scheduler's filter, prioritize, bind and preempt POSTs.

Hand-written on httptools (llhttp, the parser uvicorn uses) because aiohttp's fixed cost per request
was the largest share of a filter call: ~60 µs of a 500-name call and ~90 µs p50 / ~260 µs p99 of a
5,000-name one on the benchmark machine, against a filter that itself takes 80-300 µs (docs/BENCHMARKS.md).
A connection stays here only while it carries verb POSTs, which is all kube-scheduler sends on its
extender connections. Any other first request (health, metrics, debug, a browser) hands the
connection, bytes and all, to aiohttp, which serves the whole API including the verbs. The verbs'
logic lives in verbs.Verbs (bytes in, bytes out); this module only frames requests and replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING

import httptools

from scheduler.extender.wire import WireError

if TYPE_CHECKING:
    from scheduler.extender.verbs import Verbs

PREFIX = b"/scheduler/"
VERBS = (b"filter", b"prioritize", b"bind", b"preempt")
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           413: b"Payload Too Large", 500: b"Internal Server Error", 503: b"Service Unavailable"}
FIRST_LINE_LIMIT = 8192


def verb_of(request_line: bytes) -> bytes | None:
    """`POST /scheduler/filter HTTP/1.1` -> b"filter"; anything else -> None."""
    parts = request_line.split(b" ", 2)
    if len(parts) != 3 or parts[0] != b"POST" or not parts[1].startswith(PREFIX):
        return None
    verb = parts[1][len(PREFIX):]
    return verb if verb in VERBS else None


class _HandOff(Exception):
    """Raised from a parser callback: this request is not a verb, give the connection to aiohttp."""


class _TooLong(Exception):
    """Raised from a parser callback: a request target longer than any verb's."""


class VerbServer:
    """Shared by all verb connections of one listening socket."""

    def __init__(self, berth: Verbs, fallback: Callable[[], asyncio.Protocol], keepalive: float) -> None:
        self.berth = berth  # the verbs, with their error replies (refused, too_large, failed)
        self.fallback = fallback  # aiohttp's web.Server: a protocol factory for the handed-off connections
        self.keepalive = keepalive
        self.max_body = berth.state.config.server.max_body_bytes
        self.connections: set[VerbConnection] = set()
        self._date = b""
        self._date_at = 0

    def __call__(self) -> VerbConnection:
        return VerbConnection(self)

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:  # formatted once a second, not per reply
            self._date, self._date_at = formatdate(now, usegmt=True).encode(), now
        return self._date

    def close_idle(self, idle_for: float) -> None:
        """Close connections idle longer than `idle_for` seconds (keep-alive expiry and shutdown)."""
        now = time.monotonic()
        for conn in list(self.connections):
            if not conn.busy and now - conn.active_at >= idle_for:
                conn.transport.close()

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.keepalive / 4))
            self.close_idle(self.keepalive)


class VerbConnection(asyncio.Protocol):
    """One kube-scheduler connection. Requests are answered in order; Go does not pipeline, but
    requests that arrive while a bind is awaited are queued rather than answered out of order."""

    def __init__(self, server: VerbServer) -> None:
        self.server = server
        self.transport: asyncio.Transport
        self.parser = httptools.HttpRequestParser(self)
        self.first: bytes | None = b""  # bytes of the first request line while undecided; None once decided
        self.busy = False
        self.active_at = time.monotonic()
        self._queue: list[tuple[bytes, bytes, bool]] = []
        self._bind_task: asyncio.Future[bytes] | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._expect = False
        # The raw bytes of the message being parsed, kept while it began at the start of a chunk: what a
        # hand-off to aiohttp replays. Unknown (empty) when it began behind a pipelined request.
        self._chunks: list[bytes] = []
        self._between = True  # no message in progress: the next chunk starts one
        self._completed = False  # a message completed during the current feed

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # replies are written whole: no reason to wait for ACKs
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.active_at = time.monotonic()
        if self.first is not None:
            data = self.first + data
            end = data.find(b"\r\n")
            if end < 0 and len(data) < FIRST_LINE_LIMIT:
                self.first = data
                return
            self.first = None
            if verb_of(data[:end]) is None:
                self._hand_off(data)
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self._between:
            self._chunks = [data]
        elif self._chunks:
            self._chunks.append(data)
        self._completed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HandOff):
                self._hand_off(b"".join(self._chunks))
            elif isinstance(exc.__context__, _TooLong):
                self._write(400, b'{"error":"request target longer than %d bytes"}' % FIRST_LINE_LIMIT, False)
            else:
                self._write(500, self.server.berth.failed("http", "a verb connection"), keep_alive=False)
        except httptools.HttpParserError as exc:
            self._write(400, f'{{"error":"malformed HTTP request: {exc}"}}'.encode(), keep_alive=False)
        except httptools.HttpParserUpgrade:
            self._write(400, b'{"error":"protocol upgrades are not served here"}', keep_alive=False)

    def _hand_off(self, data: bytes) -> None:
        if not data:
            self._write(400, b'{"error":"pipelined requests to other paths are not served on a verb '
                             b'connection; open a new connection"}', keep_alive=False)
            return
        self.server.connections.discard(self)
        handler = self.server.fallback()
        self.transport.set_protocol(handler)
        handler.connection_made(self.transport)
        handler.data_received(data)

    def pause_writing(self) -> None:  # a caller that does not read its replies stops being read
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._between = False
        if self._completed:
            self._chunks = []
        self._url, self._body, self._size = b"", [], 0
        self._too_large = self._expect = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > FIRST_LINE_LIMIT:
            raise _TooLong

    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low == b"content-length":
            with contextlib.suppress(ValueError):
                self._too_large = int(value) > self.server.max_body
        elif low == b"expect" and value.lower() == b"100-continue":
            self._expect = True

    def on_headers_complete(self) -> None:
        path = self._url.split(b"?", 1)[0]
        if not (path.startswith(PREFIX) and path[len(PREFIX):] in VERBS and self.parser.get_method() == b"POST"):
            raise _HandOff
        if self._expect and not self._too_large:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.server.max_body:
            self._too_large = True
        if not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._between = self._completed = True
        self._chunks = []
        verb = self._url.split(b"?", 1)[0][len(PREFIX):]
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep = self.parser.should_keep_alive()
        if self._too_large:
            detail = f"{self._size} bytes" if self._size else "Content-Length over the limit"
            self._write(413, self.server.berth.too_large(verb.decode(), detail), keep_alive=False)
            return
        if self.busy:
            self._queue.append((verb, body, keep))
        else:
            self._answer(verb, body, keep)

    # -- answering -----------------------------------------------------------------------------
    def _answer(self, verb: bytes, body: bytes, keep: bool) -> None:
        berth = self.server.berth
        name = verb.decode()
        timer = berth.timers[name]
        t0 = time.perf_counter()
        try:
            if verb == b"filter":
                reply = berth.filter_body(body)
            elif verb == b"prioritize":
                reply = berth.prioritize_body(body)
            elif verb == b"preempt":
                reply = berth.preempt_body(body)
            else:
                self.busy = True
                # Held here: the event loop keeps only a weak reference to a running task.
                self._bind_task = asyncio.ensure_future(berth.bind_body(body))
                self._bind_task.add_done_callback(lambda t: self._bound(t, keep, t0))
                return
        except WireError as exc:
            self._write(exc.status, berth.refused(name, exc), keep)
        except Exception:
            self._write(500, berth.failed(name, self._url.decode(errors="replace")), keep)
        else:
            self._write(200, reply, keep)
        timer.observe(time.perf_counter() - t0)

    def _bound(self, task: asyncio.Future[bytes], keep: bool, t0: float) -> None:
        berth = self.server.berth
        self.busy, self._bind_task = False, None
        berth.timers["bind"].observe(time.perf_counter() - t0)
        if task.cancelled():
            self.transport.close()
            return
        exc = task.exception()
        if exc is None:
            self._write(200, task.result(), keep)
        elif isinstance(exc, WireError):
            self._write(exc.status, berth.refused("bind", exc), keep)
        else:
            self._write(500, berth.failed("bind", "/scheduler/bind", exc), keep)
        while self._queue and not self.busy and not self.transport.is_closing():
            self._answer(*self._queue.pop(0))

    def _write(self, status: int, body: bytes, keep_alive: bool) -> None:
        if self.transport.is_closing():  # the caller left while a bind was awaited
            return
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n"
                % (status, REASONS.get(status, b"Error"), len(body), self.server.date(),
                   b"" if keep_alive else b"Connection: close\r\n"))
        # Two buffers, one writev: a reply of several hundred KB is not copied to prepend its head.
        self.transport.writelines((head, body))
        self.active_at = time.monotonic()
        if not keep_alive:
            self.transport.close()
