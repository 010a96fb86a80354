"""The aiohttp application: every route of Berth's API and the middleware that turns errors into
JSON replies with a Content-Length (never chunked: Go would drop the connection). Bad input is a
4xx naming what is wrong, never a 500.

On the verbs' port kube-scheduler's connections are served by verbs_http.py; aiohttp gets every
other request (and the verbs too, from any client whose first request is not a verb POST).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from scheduler.extender.debug import ENDPOINTS, DebugViews, index_view, json_response
from scheduler.extender.errors import ErrorReplies
from scheduler.extender.verbs import Verbs
from scheduler.extender.wire import WireError
from scheduler.serving.guard import application
from scheduler.ui.routes import ENDPOINTS as UI_ENDPOINTS
from scheduler.ui.routes import mount as mount_ui

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"


def make_app(verbs: Verbs, errors: ErrorReplies, debug: DebugViews, serve_verbs: bool = True) -> web.Application:
    """The whole API; with serve_verbs=False only health, readiness and metrics (the plain port in TLS
    mode, for kubelet probes and Prometheus, while the verbs need a client certificate)."""
    app = application(client_max_size=verbs.state.config.server.max_body_bytes, middlewares=[_error_middleware(errors)])
    if serve_verbs:
        for name, handler in _verb_handlers(verbs).items():
            app.router.add_post(f"/scheduler/{name}", _timed(verbs, name, handler))
        app.router.add_get("/debug/state", debug.debug_state)
        app.router.add_get("/debug/nodes", debug.debug_nodes)
        app.router.add_get("/debug/teams", debug.debug_teams)
        app.router.add_get("/debug/stalls", debug.debug_stalls)
        app.router.add_get("/debug/queue", debug.debug_queue)
        app.router.add_route("*", "/debug/explain", debug.debug_explain)
    app.router.add_get("/healthz", debug.healthz)
    app.router.add_get("/readyz", debug.readyz)
    app.router.add_get("/metrics", debug.metrics_view)
    # GET / lists what this port serves: everything, or (serve_verbs=False) health, readiness, metrics.
    routes = {r: d for r, d in ENDPOINTS.items() if serve_verbs or r.split()[1] in ("/healthz", "/readyz", "/metrics")}
    mode = "demo cluster" if debug.fetch_pod is None else "live cluster"
    if serve_verbs:  # the dashboard, beside /debug and behind the same authentication; / sends browsers to it
        mount_ui(app, debug.state, index_view(routes | UI_ENDPOINTS, mode))
    else:
        app.router.add_get("/", index_view(routes, mode))
    return app


def _error_middleware(errors: ErrorReplies) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        verb = request.path.rsplit("/", 1)[-1]
        length = request.content_length
        if length is not None and length > errors.server.max_body_bytes:
            # Refused before its body is read, as on the hot path: aiohttp read (and held) up to the limit
            # first, and a client that asked `Expect: 100-continue` was told to send it all.
            response = web.Response(
                body=errors.too_large(verb, "Content-Length over the limit"), status=413, content_type=JSON
            )
            response.force_close()
            return response
        try:
            return await handler(request)
        except WireError as exc:
            return web.Response(body=errors.refused(verb, exc), status=exc.status, content_type=JSON)
        except web.HTTPRequestEntityTooLarge as exc:
            return web.Response(body=errors.too_large(verb, exc.text or ""), status=413, content_type=JSON)
        except web.HTTPMethodNotAllowed as exc:
            return json_response(
                {
                    "error": f"{request.method} is not allowed on {request.path}; use "
                    f"{', '.join(sorted(exc.allowed_methods))}"
                },
                405,
            )
        except web.HTTPException as exc:
            if exc.status >= 400:
                return json_response({"error": f"{exc.reason}: {request.path}"}, exc.status)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            return web.Response(body=errors.failed(verb, request.path), status=500, content_type=JSON)

    return middleware


def _verb_handlers(verbs: Verbs) -> dict[str, Handler]:
    async def filter(request: web.Request) -> web.Response:
        return web.Response(body=verbs.filter_body(await request.read()), content_type=JSON)

    async def prioritize(request: web.Request) -> web.Response:
        return web.Response(body=verbs.prioritize_body(await request.read()), content_type=JSON)

    async def bind(request: web.Request) -> web.Response:
        return web.Response(body=await verbs.bind_body(await request.read()), content_type=JSON)

    async def preempt(request: web.Request) -> web.Response:
        return web.Response(body=verbs.preempt_body(await request.read()), content_type=JSON)

    return {"filter": filter, "prioritize": prioritize, "bind": bind, "preempt": preempt}


def _timed(verbs: Verbs, verb: str, fn: Handler) -> Handler:
    timer = verbs.timers[verb]

    async def handler(request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        try:
            return await fn(request)
        finally:
            timer.observe(time.perf_counter() - t0)

    return handler
