"""The admission listener's routes: POST /mutate (the webhook), GET /debug/queue, GET /healthz."""

from aiohttp import web

from scheduler.admission.loop import AdmissionLoop
from scheduler.admission.webhook import ReviewError, review
from scheduler.config import AdmissionConfig
from scheduler.serving.guard import application

JSON = "application/json"


def admission_app(cfg: AdmissionConfig, loop: AdmissionLoop, max_body: int = 8 << 20) -> web.Application:
    # An AdmissionReview carries one Pod: a few KB; the API server caps objects at ~1.5 MB.
    app = application(client_max_size=max_body)

    async def mutate(request: web.Request) -> web.Response:
        try:
            body = review(await request.read(), cfg.scheduler_name, cfg.queueing)
        except ReviewError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.Response(body=body, content_type=JSON)

    async def queue(request: web.Request) -> web.Response:
        return web.json_response(loop.view())

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_post("/mutate", mutate)
    app.router.add_get("/debug/queue", queue)
    app.router.add_get("/healthz", healthz)
    return app
