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
import gc
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from scheduler.extender.http_framing import (
    FIRST_LINE_LIMIT,
    OVERFLOW,
    PREFIX,
    REASONS,
    Framing,
    HandOff,
    Refuse,
    opening_refusal,
    verb_of,
    version_refusal,
)
from scheduler.extender.wire import WireError
from scheduler.observability.stalls import clock as _clock

if TYPE_CHECKING:
    from scheduler.extender.verb_server import VerbServer

# Requests completed behind a bind wait in order; past either bound the connection is not read until the
# queue drains (one read, 256 KB at most, may still be parsed past the count).
QUEUE_COUNT = 64
QUEUE_BYTES = 16 << 20
LINGER = 2.0  # after a refusal: seconds the input is still read (and dropped) so the reply is not lost to a reset
_ANSWER, _WRITE, _HANDOFF = 0, 1, 2  # what a queued item does once the replies before it are written
_PAUSED_WRITING, _PAUSED_QUEUE = 1, 2
_JOIN_BELOW = 64 * 1024  # bodies smaller than this may be copied next to their head


class VerbConnection(Framing, asyncio.Protocol):
    """One kube-scheduler connection. Requests are answered in order; Go does not pipeline, but
    requests that arrive while a bind is awaited are queued rather than answered out of order."""

    def __init__(self, server: VerbServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.first: bytes | None = b""  # bytes of the first request line while undecided; None once decided
        self.busy = False  # a bind is awaited: replies behind it wait in _queue
        self.over_cap = False
        self.active_at = time.monotonic()  # the last reply written (idle since)
        self.started_at = 0.0  # the first byte of the request in progress; 0 when none is
        self._received = 0.0  # the first byte of the request last completed (for the stall recorder)
        self._now = 0.0
        self._dead = False  # refused or handed off: nothing more is parsed
        self._paused = 0
        self._queue: deque[tuple[int, bytes, bytes, bool]] = deque()
        self._queued_bytes = 0
        self._backlog: list[bytes] | None = None  # bytes read while the queue was full, parsed once it drains
        self._deferred: list[bytes] | None = None  # a hand-off's bytes, replayed once the replies before it are out
        self._bind_task: asyncio.Future[bytes] | None = None
        self._url = b""
        self._verb = b""
        self._body: list[bytes] = []
        self._size = 0
        self._receiving = 0
        self._expect = False
        self._unmet = False
        self._head_done = False
        self._head_size = 0  # bytes of the request line and fields, as the parser hands them over
        self._head_fed = 0  # bytes read while the head was incomplete, after the read it began in
        self._fields = 0
        self._length: int | None = None
        self._codings: list[bytes] | None = None  # Transfer-Encoding, lower-cased, in order
        self._upgrade = False
        self._chunk_open = False  # a chunk's size line was parsed in this read and its data did not end
        self._chunk_data = 0  # the open chunk's bytes in this read
        self._tail = b""  # the end of the previous read: a chunk-size line may begin there
        # The raw bytes of the message being parsed, kept while it began at the start of a chunk: what a
        # hand-off to aiohttp replays. Unknown (empty) when it began behind a pipelined request.
        self._chunks: list[bytes] = []
        self._between = True  # no message in progress: the next chunk starts one
        self._completed = False  # a message completed during the current feed
        self._begun = False  # a message began during the current feed
        self._eof = False  # the caller closed its sending side: close once every reply owed is written

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) < server.max_connections:
            server.connections.add(self)
        else:
            if len(server.overflow) >= OVERFLOW:
                # Full of connections yet to send a first line: the oldest gives way, answered, so a flood of
                # silent ones cannot shut out the health checks (every later connection was closed unanswered).
                min(server.overflow, key=lambda c: c.started_at)._evict()
            self.over_cap = True
            self.started_at = time.monotonic()  # the head's deadline runs from now: a silent one leaves soon
            server.overflow.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # replies are written whole: no reason to wait for ACKs
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()

    def eof_received(self) -> bool:
        """The caller half-closed (sent its request, then shut its sending side, as `nc -N` and some
        clients do). asyncio closes the transport when this returns False, which dropped a bind's reply
        still awaited and the replies queued behind it: those are written first, then the connection
        closes. A request cut short by the close can never complete: 400 saying so."""
        self._eof = True
        if self.busy or self._queue:
            return True  # _drain closes once the queue is empty
        if not self._dead and (self.first or not self._between):
            self._refuse(400, b'{"error":"the connection was half-closed before the request was complete"}')
            return True  # _refuse half-closes our side too, then closes
        return False

    def _too_many(self) -> bytes:
        return (
            b'{"error":"too many connections: Berth serves at most %d verb connections '
            b'(server.max_connections)"}' % self.server.max_connections
        )

    def _evict(self) -> None:
        """Leave the overflow for a newer connection: 503 and close (no linger: slots and descriptors are
        what is short); one refused already has its reply and is closed."""
        self.server.overflow.discard(self)
        if self._dead:
            if self.transport is not None:
                self.transport.close()
            return
        self._dead = True
        self._write(503, self._too_many(), False)

    def _release(self) -> None:
        """Forget the connection: the parser holds this protocol's bound methods, a cycle that only the
        cyclic collector could free (and a frozen heap never is); buffers go with it."""
        self.server.connections.discard(self)
        self.server.overflow.discard(self)
        self._received_all()
        self.parser = self.transport = self._backlog = self._deferred = self.first = None
        self._body, self._chunks, self._tail, self._url = [], [], b"", b""
        self._queue.clear()
        self._dead, self.started_at = True, 0.0

    def data_received(self, data: bytes) -> None:
        self._now = now = time.monotonic()
        if not self.started_at:
            self.started_at = now
        if self._dead:
            if self._deferred is not None:  # read before pause_reading took effect: replayed with the rest
                self._deferred.append(data)
            return
        if self._backlog is not None:
            self._backlog.append(data)
            return
        if self.first is not None:
            # Empty lines before the request line are ignored (RFC 9112 2.2), here too: dropped as they come,
            # so the line tested is the request line and endless CRLFs are not held (the deadline ends them).
            data = (self.first + data).lstrip(b"\r\n")
            if data and (refusal := opening_refusal(data[0])) is not None:
                self._refuse(400, refusal)
                return
            end = data.find(b"\n")  # bare LF too: the parser answers it with a 400
            if end < 0 and len(data) < FIRST_LINE_LIMIT:
                self.first = data
                return
            self.first = None
            line = data[:end].rstrip(b"\r")
            refusal = version_refusal(line) if end >= 0 else None
            if refusal is not None:
                self._refuse(400, refusal)
                return
            verb = verb_of(line)
            if verb is None:
                self._hand_off(data)
                return
            if self.over_cap:
                self._refuse(503, self._too_many())
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self._between:
            self._chunks = [data]
        elif self._chunks:
            self._chunks.append(data)
        self._completed = self._begun = self._chunk_open = False
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HandOff):
                self._hand_off(b"".join(self._chunks))
            elif isinstance(cause, Refuse):
                self._refuse(cause.status, cause.body)
            else:
                self._refuse(500, self.server.berth.failed("http", "a verb connection"))
        except httptools.HttpParserError as exc:
            self._refuse(400, f'{{"error":"malformed HTTP request: {exc}"}}'.encode())
        except httptools.HttpParserUpgrade:
            if self._completed:  # answered already (and closed: see on_message_complete); one reply only
                self._dead = True
            else:
                self._refuse(400, b'{"error":"protocol upgrades are not served here"}')
        else:
            if self.started_at and not self._head_done:
                self._head_too_large(data)
            elif self._codings is not None and not self._between:
                self._chunk_too_large(data)

    def _hand_off(self, data: bytes) -> None:
        if not data:
            self._refuse(
                400,
                b'{"error":"pipelined requests to other paths are not served on a verb '
                b'connection; open a new connection"}',
            )
            return
        if self.busy:  # the replies before it come first: handed over once they are written
            self._dead, self._deferred = True, [data]
            self._queue.append((_HANDOFF, b"", b"", False))
            self._pause(_PAUSED_QUEUE)
            return
        transport = self.transport
        assert transport is not None
        eof = self._eof
        self._release()
        if self._paused:
            transport.resume_reading()
        # aiohttp serves it, counted and under a deadline (guard.py); told of a half-close that came first
        self.server.guard.adopt(transport, data, eof)

    def _refuse(self, status: int, body: bytes) -> None:
        """Answer `status` and close, after the replies still owed; nothing more is read."""
        self._dead = True
        self.started_at = 0.0
        self._body, self._chunks = [], []
        self._received_all()  # the body in progress is dropped now, not when a lingering close ends
        if self.busy:
            self._queue.append((_WRITE, b"%d" % status, body, False))
            self._pause(_PAUSED_QUEUE)
        else:
            self._write(status, body, False, linger=True)

    def expire(self, now: float) -> None:
        if self._dead:
            return
        limit = self.server.request_timeout if self._head_done else self.server.head_timeout
        if now - self.started_at > limit:
            what = "request" if self._head_done else "request head"
            self._refuse(
                408,
                b'{"error":"the %s did not arrive within %g s (server.request_timeout_seconds)"}'
                % (what.encode(), limit),
            )

    def _pause(self, why: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= why

    def _resume(self, why: int) -> None:
        self._paused &= ~why
        if not self._paused and self.transport is not None and not self._dead:
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # a caller that does not read its replies stops being read
        self._pause(_PAUSED_WRITING)

    def resume_writing(self) -> None:
        self._resume(_PAUSED_WRITING)

    # -- httptools callbacks (the head and body: http_framing.Framing) --------------------------------
    def _received_all(self) -> None:
        """The body is complete (or the connection gone): it no longer counts among those still arriving."""
        self.server.receiving -= self._receiving
        self._receiving = 0

    def on_message_complete(self) -> None:
        self._received_all()
        self._between = self._completed = True
        self._chunks = []
        self._received, self.started_at = self.started_at or self._now, 0.0
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._body = []  # held by the answer (or the queue) alone, released with the reply
        assert self.parser is not None
        keep = self.parser.should_keep_alive()
        if self._upgrade:  # the parser takes what follows for another protocol: nothing more is read
            keep = False
        if self._codings is not None:
            # RFC 9112 6.1: HTTP/1.0 with Transfer-Encoding has faulty framing; close after the reply.
            keep = keep and self.parser.get_http_version() != "1.0"
            self._tail = b""
        if self.busy:
            self._queue.append((_ANSWER, self._verb, body, keep))
            self._queued_bytes += len(body)
            if len(self._queue) >= QUEUE_COUNT or self._queued_bytes >= QUEUE_BYTES:
                self._pause(_PAUSED_QUEUE)
                self._backlog = []
        else:
            self._answer(self._verb, body, keep)

    # -- answering -----------------------------------------------------------------------------
    def _answer(self, verb: bytes, body: bytes, keep: bool) -> None:
        berth = self.server.berth
        stalls = self.server.stalls
        name = verb.decode()
        received = self._received
        stalls.in_call = True
        # The cyclic collector never starts inside a call: a young collection that comes due now runs once
        # the reply is out (housekeeping also collects the young generation between calls, app.py).
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        t0 = _clock()
        try:
            if verb == b"filter":
                reply = berth.filter_body(body)
            elif verb == b"prioritize":
                reply = berth.prioritize_body(body)
            elif verb == b"preempt":
                reply = berth.preempt_body(body)
            else:
                self.busy = True
                stalls.in_call = False
                if collecting:
                    gc.enable()
                # Held here: the event loop keeps only a weak reference to a running task.
                self._bind_task = asyncio.ensure_future(berth.bind_body(body))
                self._bind_task.add_done_callback(lambda t: self._bound(t, keep, received, t0))
                return
        except WireError as exc:
            status, reply = exc.status, berth.refused(name, exc)
        except Exception:
            status, reply = 500, berth.failed(name, PREFIX.decode() + name)
        else:
            status = 200
        answered = _clock()
        try:
            self._write(status, reply, keep)
        finally:  # whatever happens to the write, the collector is not left off
            written = _clock()
            stalls.in_call = False
            if collecting:
                gc.enable()
        berth.timers[name].observe(written - t0)
        stalls.call(name, received, t0, answered, written, len(reply))

    def _bound(self, task: asyncio.Future[bytes], keep: bool, received: float, t0: float) -> None:
        berth = self.server.berth
        self.busy, self._bind_task = False, None
        answered = _clock()
        berth.timers["bind"].observe(answered - t0)
        if self.transport is None:  # the caller left while the bind was awaited
            return
        if task.cancelled():
            self.transport.close()
            return
        exc = task.exception()
        if exc is None:
            reply = task.result()
            self._write(200, reply, keep)
        elif isinstance(exc, WireError):
            reply = berth.refused("bind", exc)
            self._write(exc.status, reply, keep)
        else:
            reply = berth.failed("bind", "/scheduler/bind", exc)
            self._write(500, reply, keep)
        self.server.stalls.call("bind", received, t0, answered, _clock(), len(reply))
        self._drain()

    def _drain(self) -> None:
        """Answer what waited behind a bind, in order, until the next bind; then read again."""
        queue = self._queue
        while queue and not self.busy and self.transport is not None and not self.transport.is_closing():
            kind, a, body, keep = queue.popleft()
            if kind == _ANSWER:
                self._queued_bytes -= len(body)
                self._answer(a, body, keep)
            elif kind == _WRITE:
                self._write(int(a), body, False, linger=True)
            else:
                self._hand_off(b"".join(self._deferred or ()))
                return
        if self._queue or self._backlog is None or self._dead or self.transport is None:
            self._close_after_eof()
            return
        backlog, self._backlog = self._backlog, None
        self._queued_bytes = 0
        self._resume(_PAUSED_QUEUE)
        if backlog:
            self._feed(b"".join(backlog))
        self._close_after_eof()

    def _close_after_eof(self) -> None:
        """After the caller's half-close (eof_received) the connection ends once no reply is owed."""
        if self._eof and not self.busy and not self._queue and self.transport is not None:
            self.transport.close()

    def _write(self, status: int, body: bytes, keep_alive: bool, linger: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():  # the caller left while a bind was awaited
            return
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n" % (
            status,
            REASONS.get(status, b"Error"),
            len(body),
            self.server.date(),
            b"" if keep_alive else b"Connection: close\r\n",
        )
        # Two buffers, one writev (uvloop, and asyncio from 3.12): a reply of several hundred KB is not
        # copied to prepend its head. asyncio's 3.11 transports join the buffers in writelines: there a
        # large body goes in a write of its own instead of being copied.
        if len(body) < _JOIN_BELOW or type(transport).writelines is not asyncio.WriteTransport.writelines:
            transport.writelines((head, body))
        else:
            transport.write(head)
            transport.write(body)
        self.active_at = time.monotonic()
        if linger and transport.can_write_eof():
            # Refused while the caller may still be sending: closing now would answer its next bytes with a
            # reset, which can destroy the reply unread (RFC 9112 9.6). Half-close, drop what still comes.
            transport.write_eof()
            if self._paused:
                self._paused = 0
                transport.resume_reading()
            asyncio.get_running_loop().call_later(LINGER, transport.close)
        elif not keep_alive:
            transport.close()
