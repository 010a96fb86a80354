"""The dashboard's routes: the page and its three files, and the JSON views it polls.

Mounted by extender/http_app.py on the port that serves the verbs and /debug, so the same
authentication guards it (mTLS in the TLS overlay). Every view is read-only. The map is cached by a
fingerprint of what it shows: a poll of an unchanged cluster is a hash and a 304.
"""

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from typing import Any

import orjson
from aiohttp import web

from scheduler.cluster.state import ClusterState
from scheduler.ui.views import GpuHours, MapBuilder, map_fingerprint, node_pods, queue_view, teams_view

JSON = "application/json"
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
SAMPLE_SECONDS = 15.0  # GPU-hours sampling
WINDOW_MAX = 7 * 24 * 3600.0
# The page loads only its own files and talks only to this origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

# What GET / (and GET /debug) list for these routes, beside extender/debug.ENDPOINTS.
ENDPOINTS = {
    "GET /ui": "the dashboard (a browser at / is sent here): GPU map, teams, queue, explain",
    "GET /ui/{file}": "the dashboard's index.html, app.js and app.css",
    "GET /ui/api/map": "GPU map: per node one character per GPU (team), CPU %, flags, shared fractions; ?layout=KEY",
    "GET /ui/api/node": "?name=: a node and the pods that hold it",
    "GET /ui/api/teams": "per team and resource: guaranteed, max, used, borrowed; GPU-hours in ?window=SECONDS",
    "GET /ui/api/queue": "gangs in admission order with plans, then waiting pods with wait time and reason",
    "GET /debug": "this list of endpoints, as JSON (GET / gives it to clients that do not ask for HTML)",
}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type=JSON, headers={"Cache-Control": "no-store"}
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class Dashboard:
    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.hours = GpuHours()
        self.builder = MapBuilder(state)
        self.first_seen: dict[str, float] = {}
        self._map: dict[bool, tuple[int, str, bytes, bytes]] = {}  # with layout? -> (fingerprint, etag, raw, gz)
        self._static = {name: files("scheduler.ui").joinpath("static", name).read_bytes() for name in STATIC}

    # -- the page --------------------------------------------------------------------------------
    def page(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        body, kind = self._static[name], STATIC[name]

        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=kind, headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})

        return handler

    async def file(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in self._static:
            return _error(404, f"no such file: /ui/{name} (the dashboard serves {', '.join(STATIC)})")
        return await self.page(name)(request)

    # -- the views -------------------------------------------------------------------------------
    async def map(self, request: web.Request) -> web.Response:
        """?layout=KEY: the client has the layout with that key; it is sent again only when it changed."""
        fp = map_fingerprint(self.state)
        layout_key = str(self.builder.layout_key())
        with_layout = request.query.get("layout") != layout_key
        cached = self._map.get(with_layout)
        if cached is None or cached[0] != fp:
            out = self.builder.view(with_layout)
            out["layoutKey"] = layout_key
            raw = orjson.dumps(out)
            cached = (fp, f'"{fp & 0xFFFFFFFFFFFF:x}-{int(with_layout)}"', raw, gzip.compress(raw, 5))
            self._map[with_layout] = cached
        _, etag, raw, gz = cached
        headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=gz, content_type=JSON, headers={**headers, "Content-Encoding": "gzip"})
        return web.Response(body=raw, content_type=JSON, headers=headers)

    async def node(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        if not name:
            return _error(400, "node needs ?name=NODE")
        out = node_pods(self.state, name)
        if out is None:
            return _error(404, f"no node {name!r} in Berth's cache")
        return _json(out)

    async def teams(self, request: web.Request) -> web.Response:
        raw = request.query.get("window", "3600")
        try:
            window = float(raw)
        except ValueError:
            return _error(400, f"window must be a number of seconds, not {raw!r}")
        if not 0 < window <= WINDOW_MAX:
            return _error(400, f"window must be from 1 second to {int(WINDOW_MAX)} (a week), not {raw}")
        self.hours.sample(self.state)
        return _json(teams_view(self.state, self.hours, window))

    async def queue(self, request: web.Request) -> web.Response:
        return _json(queue_view(self.state, self.first_seen))

    # -- GPU-hours sampling ----------------------------------------------------------------------
    async def sampling(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: sample GPU-hours while the app is served."""
        task = asyncio.create_task(self._sample_forever(), name="ui-gpu-hours")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _sample_forever(self) -> None:
        while True:
            self.hours.sample(self.state, time.time())
            await asyncio.sleep(SAMPLE_SECONDS)


def mount(app: web.Application, state: ClusterState, index: Callable[[web.Request], Awaitable[web.Response]]) -> None:
    """The dashboard's routes on `app`; `index` is the JSON list of endpoints GET / gave before the
    dashboard: now at GET /debug, and at GET / for any client that does not ask for HTML."""
    ui = Dashboard(state)
    page = ui.page("index.html")
    app.router.add_get("/ui", page)
    app.router.add_get("/ui/api/map", ui.map)
    app.router.add_get("/ui/api/node", ui.node)
    app.router.add_get("/ui/api/teams", ui.teams)
    app.router.add_get("/ui/api/queue", ui.queue)
    app.router.add_get("/ui/{file}", ui.file)
    app.router.add_get("/debug", index)
    app.router.add_get("/", root(index))
    app.cleanup_ctx.append(ui.sampling)


def root(index: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /: a browser (it asks for text/html) goes to the dashboard; curl and tooling get the JSON."""

    async def handler(request: web.Request) -> web.Response:
        if "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPFound("/ui")
        return await index(request)

    return handler
