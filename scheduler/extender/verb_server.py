"""What the verb connections of one listening socket share: the limits read from the config, the
connection sets and their cap, the keep-alive and deadline sweep, the cached Date header, and the guard
for connections handed to aiohttp. The protocol itself is verbs_http.VerbConnection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING

from scheduler.extender.http_framing import HEAD_TIMEOUT, connection_cap, receiving_cap
from scheduler.extender.verbs_http import VerbConnection
from scheduler.observability.stalls import RECORDER, StallRecorder
from scheduler.serving.guard import Guard, guard_cap

if TYPE_CHECKING:
    from scheduler.extender.verbs import Verbs


class VerbServer:
    """Shared by all verb connections of one listening socket."""

    def __init__(self, berth: Verbs, fallback: Callable[[], asyncio.Protocol], keepalive: float) -> None:
        self.berth = berth  # the verbs, with their error replies (refused, too_large, failed)
        self.fallback = fallback  # aiohttp's web.Server: a protocol factory for the handed-off connections
        self.keepalive = keepalive
        config = berth.state.config.server
        self.max_body = config.max_body_bytes
        self.max_receiving = receiving_cap(self.max_body)
        self.receiving = 0  # bytes of request bodies not complete yet, over all connections (Framing.on_body)
        self.request_timeout = config.request_timeout_seconds
        self.head_timeout = min(HEAD_TIMEOUT, self.request_timeout)
        self.max_connections = connection_cap(config.max_connections)
        self.guard = Guard(fallback, self.request_timeout, guard_cap(self.max_connections), self.max_receiving)
        self.connections: set[VerbConnection] = set()
        self.overflow: set[VerbConnection] = set()  # over the cap, until their first line says what they are
        self._date = b""
        self._date_at = 0
        self.stalls: StallRecorder = RECORDER  # each call's phases, for GET /debug/stalls

    def __call__(self) -> VerbConnection:
        return VerbConnection(self)

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:  # formatted once a second, not per reply
            self._date, self._date_at = formatdate(now, usegmt=True).encode(), now
        return self._date

    def close_idle(self, idle_for: float) -> None:
        """Close connections idle longer than `idle_for` seconds (keep-alive expiry); 0: every connection
        not awaiting a bind (shutdown). A request in progress is not idle: its deadline applies."""
        now = time.monotonic()
        for conn in [*self.connections, *self.overflow]:
            if (
                conn.transport is not None
                and not conn.busy
                and (idle_for <= 0 or (not conn.started_at and now - conn.active_at >= idle_for))
            ):
                conn.transport.close()

    def expire(self) -> None:
        """408 for requests past their deadline (head, or whole request)."""
        now = time.monotonic()
        for conn in [*self.connections, *self.overflow]:
            if conn.started_at:
                conn.expire(now)

    async def sweep(self) -> None:
        every = max(0.05, min(1.0, self.keepalive / 4, self.head_timeout / 4))
        while True:
            await asyncio.sleep(every)
            self.close_idle(self.keepalive)
            self.expire()
            self.guard.expire()
