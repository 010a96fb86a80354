"""HTTP/1.1 framing for the verb connections (verbs_http.py): the limits, the request line's test, and the
httptools callbacks that read a request's head and body under them. Refusals are raised as `Refuse` (answer
this status and close) or `HandOff` (not a verb: aiohttp serves the connection) from inside the parser;
verbs_http.VerbConnection turns them into replies. Split from verbs_http.py by concern: this part decides
what a request is and whether it is acceptable, that part answers it."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from scheduler.extender.verb_server import VerbServer

PREFIX = b"/scheduler/"
VERBS = (b"filter", b"prioritize", b"bind", b"preempt")
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}
FIRST_LINE_LIMIT = 8192
# The request head: 64 KB in all and 100 fields. Apache httpd's defaults are 100 fields (LimitRequestFields)
# of 8190 bytes each, nginx holds a head in 4 x 8 KB buffers; kube-scheduler sends five fields.
HEAD_LIMIT = 64 * 1024
FIELD_LIMIT = 100
HEAD_TIMEOUT = 10.0  # the head's deadline, from its first byte; never later than server.request_timeout_seconds


def verb_of(request_line: bytes) -> bytes | None:
    """`POST /scheduler/filter HTTP/1.1` -> b"filter"; anything else -> None."""
    parts = request_line.split(b" ", 2)
    if len(parts) != 3 or parts[0] != b"POST" or not parts[1].startswith(PREFIX):
        return None
    verb = parts[1][len(PREFIX) :]
    return verb if verb in VERBS else None


def version_refusal(line: bytes) -> bytes | None:
    """The 400 reply's body for a first request line that does not end in HTTP/1.1 or HTTP/1.0, else None.
    Left to them, llhttp served `HTTP/2.0` verbs and aiohttp answered in the version named (`HTTP/2.0 405`,
    and `HTTP/0.9 200` with headers to a line with no version): status lines no HTTP/1.1 client reads.
    A 400, not 505: bad input is a 4xx here, whatever its kind."""
    version = line.rsplit(b" ", 1)[1] if b" " in line else b""
    if version in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    if version.startswith(b"HTTP/"):
        return b'{"error":"HTTP version not supported: Berth serves HTTP/1.1 and HTTP/1.0"}'
    return b'{"error":"malformed HTTP request: the request line must be METHOD TARGET HTTP/1.1"}'


# RFC 9110 5.6.2: a method is a token. A connection whose first byte cannot begin one is not HTTP: refused at
# once instead of held until the head's deadline while the first line is awaited (a TLS ClientHello has no
# line end). 0x16 opens a TLS handshake record: a caller set for https on a plain port is told so.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TLS_HANDSHAKE = 0x16


def opening_refusal(first: int) -> bytes | None:
    """The 400 reply's body when a connection's first byte (after empty lines) cannot begin a request line."""
    if first in _TOKEN:
        return None
    if first == _TLS_HANDSHAKE:
        return b'{"error":"a TLS handshake on a port that serves plain HTTP: call it with http://, or serve TLS"}'
    return b'{"error":"malformed HTTP request: the request line must be METHOD TARGET HTTP/1.1"}'


OVERFLOW = 32  # connections over server.max_connections kept until their first line: health checks still answer


def connection_cap(configured: int) -> int:
    """server.max_connections, and never more than half the soft file-descriptor limit: the rest stays for
    aiohttp's connections (health checks), the API server and the log."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return configured if soft == resource.RLIM_INFINITY else max(1, min(configured, soft // 2))


# Request bytes still arriving, over every connection of a listener together (the verb connections' bodies;
# aiohttp's connections, serving/guard.py, on their own), are held to this many times server.max_body_bytes
# (503 past it): each request is bounded by the per-request limit, but without a bound over all of them a
# thousand connections trickling a body each could hold a thousand times it. kube-scheduler sends one filter,
# prioritize or preempt at a time; its binds are a few hundred bytes.
RECEIVING_BODIES = 2


def receiving_cap(max_body: int) -> int:
    return RECEIVING_BODIES * max_body


class HandOff(Exception):
    """Raised from a parser callback: this request is not a verb, give the connection to aiohttp."""


class Refuse(Exception):
    """Raised from a parser callback: answer this status and close (bad framing, limits)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body


class Framing:
    """The httptools callbacks of a verb connection (a mixin of VerbConnection, which owns the state)."""

    server: VerbServer
    transport: asyncio.Transport | None
    parser: httptools.HttpRequestParser | None
    busy: bool
    started_at: float
    _now: float
    _between: bool
    _begun: bool
    _completed: bool
    _chunks: list[bytes]
    _url: bytes
    _verb: bytes
    _body: list[bytes]
    _size: int
    _receiving: int  # what this connection adds to server.receiving: its body so far, until it completes
    _expect: bool
    _unmet: bool  # an Expect other than 100-continue: 417, as Go's net/http and aiohttp answer it
    _head_done: bool
    _upgrade: bool
    _head_size: int
    _head_fed: int
    _fields: int
    _hosts: int
    _length: int | None
    _codings: list[bytes] | None
    _chunk_open: bool
    _chunk_data: int
    _tail: bytes

    def _refuse(self, status: int, body: bytes) -> None:  # VerbConnection's
        raise NotImplementedError

    def _head_too_large(self, data: bytes) -> None:
        """A head still incomplete after this read: count what it has taken so far (the parser hands a field
        over only once it ends), so a megabyte of one field is refused, not buffered."""
        if not self._begun:
            self._head_fed += len(data)
        if self._head_fed > HEAD_LIMIT:
            self._refuse(431, b'{"error":"request head larger than %d bytes"}' % HEAD_LIMIT)

    def _chunk_too_large(self, data: bytes) -> None:
        """A chunk whose size line was read in this read and whose data goes on: read its size (the parser
        does not tell it) so that `ffffffffffffffff` is a 413 now, not after max_body_bytes of data."""
        if self._chunk_open:
            buf = self._tail + data[: len(data) - self._chunk_data]
            line = buf[buf.rfind(b"\n", 0, len(buf) - 1) + 1 :].split(b";", 1)[0].strip()
            with contextlib.suppress(ValueError):
                size = int(line, 16)
                if self._size - self._chunk_data + size > self.server.max_body:
                    self._refuse(413, self.server.berth.too_large(self._verb.decode(), f"a chunk of {size} bytes"))
                    return
        self._tail = data[-32:]

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._between = False
        self._begun = True
        if self._completed:
            self._chunks = []
        if not self.started_at:
            self.started_at = self._now
        self._url, self._body, self._size = b"", [], 0
        self._expect = self._unmet = self._head_done = self._upgrade = False
        self._head_size = self._head_fed = self._fields = self._hosts = 0
        self._length = self._codings = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > FIRST_LINE_LIMIT:
            raise Refuse(400, b'{"error":"request target longer than %d bytes"}' % FIRST_LINE_LIMIT)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._head_size += len(name) + len(value) + 4
        if self._fields > FIELD_LIMIT:
            raise Refuse(431, b'{"error":"more than %d header fields"}' % FIELD_LIMIT)
        if self._head_size + len(self._url) > HEAD_LIMIT:
            raise Refuse(431, b'{"error":"request head larger than %d bytes"}' % HEAD_LIMIT)
        low = name.lower()
        if low == b"content-length":
            with contextlib.suppress(ValueError):
                self._length = int(value)
        elif low == b"expect":
            if value.strip().lower() == b"100-continue":
                self._expect = True
            else:
                self._unmet = True
        elif low == b"transfer-encoding":
            self._codings = (self._codings or []) + [c.strip().lower() for c in value.split(b",") if c.strip()]
        elif low == b"upgrade":
            self._upgrade = True
        elif low == b"host":
            self._hosts += 1

    def on_headers_complete(self) -> None:
        self._head_done = True
        assert self.parser is not None
        path = self._url.split(b"?", 1)[0]
        if not (path.startswith(PREFIX) and path[len(PREFIX) :] in VERBS and self.parser.get_method() == b"POST"):
            raise HandOff
        self._chunks = []  # a verb: the raw bytes are not needed for a hand-off, the body is held once
        self._verb = path[len(PREFIX) :]
        self._check_host(self.parser.get_http_version())
        if self._upgrade and self.parser.should_upgrade():  # its body would not be parsed: refused, one reply
            raise Refuse(400, b'{"error":"protocol upgrades are not served here"}')
        if self._codings is not None:
            self._check_codings(self._codings)
        if self._unmet:  # RFC 9110 10.1.1: an expectation this server cannot meet (before any body is read)
            raise Refuse(417, b'{"error":"Expect: only 100-continue is supported"}')
        if self._length is not None and self._length > self.server.max_body:
            raise Refuse(413, self.server.berth.too_large(self._verb.decode(), "Content-Length over the limit"))
        if self._expect and not self.busy:  # no interim reply ahead of one still owed
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _check_host(self, version: str) -> None:
        """RFC 9112 3.2: an HTTP/1.1 request without a Host field, or any request with more than one, is a 400
        (Go's net/http and aiohttp, which serves the other paths, answer so); HTTP/1.0 may leave it out."""
        if self._hosts > 1:
            raise Refuse(400, b'{"error":"more than one Host header field"}')
        if self._hosts == 0 and version != "1.0":
            raise Refuse(400, b'{"error":"missing required Host header field (HTTP/1.1)"}')

    @staticmethod
    def _check_codings(codings: list[bytes]) -> None:
        """RFC 9112 6.3: chunked must be the final coding, once, or the framing is unknown (400); other codings
        are not implemented here (RFC 9112 6.1: 501)."""
        if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
            raise Refuse(400, b'{"error":"Transfer-Encoding: chunked must be the final coding, applied once"}')
        if len(codings) > 1:
            raise Refuse(501, b'{"error":"Transfer-Encoding: only chunked is supported"}')

    def on_chunk_header(self) -> None:
        self._chunk_open, self._chunk_data = True, 0

    def on_chunk_complete(self) -> None:
        self._chunk_open = False

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        server = self.server
        if self._size > server.max_body:
            raise Refuse(413, server.berth.too_large(self._verb.decode(), f"at least {self._size} bytes"))
        server.receiving += len(body)
        self._receiving += len(body)
        if server.receiving > server.max_receiving:
            raise Refuse(
                503,
                b'{"error":"server busy: request bodies still arriving on all connections together are over '
                b'%d bytes; retry"}' % server.max_receiving,
            )
        self._body.append(body)
        if self._chunk_open:
            self._chunk_data += len(body)
