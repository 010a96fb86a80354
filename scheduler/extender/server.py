"""The HTTP service: kube-scheduler's four extender verbs plus health, metrics and debug views.

Handlers parse, call into placement/binder/preempt and reply with Content-Length bodies (never
chunked: Go would drop the connection). Bad input is a 4xx naming what is wrong, never a 500.
"""

import asyncio
import gc
import logging
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from cachetools import LRUCache, TTLCache
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler import kernels as K
from scheduler.cluster.state import ClusterState, pod_key
from scheduler.extender.wire import (
    ExtenderArgs,
    NodeNamesCache,
    WireError,
    binding_reply,
    error_filter_reply,
    filter_reply,
    parse_binding_args,
    parse_preemption_args,
    preemption_reply,
)
from scheduler.model.podspec import PodAsk, PodError, pod_ask
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import account_gpu_seconds, team_rows
from scheduler.policy import preempt
from scheduler.policy.binder import Binder, BindError
from scheduler.policy.placement import (
    OTHER_RESOURCE,
    REASON_NAMES,
    Judgement,
    Reasons,
    explain,
    judge,
    run_filter,
    run_score,
)

log = logging.getLogger("berth.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"
UNKNOWN_NODE = "berth: node is not in Berth's cache yet"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON)


class Berth:
    def __init__(self, state: ClusterState, metrics: Metrics, binder: Binder,
                 fetch_pod: Callable[[str, str], Awaitable[dict[str, Any] | None]] | None = None) -> None:
        self.state = state
        self.metrics = metrics
        self.binder = binder
        self.fetch_pod = fetch_pod
        self.names = NodeNamesCache(state.table)
        # Pods seen in filter, by namespace/name: what `explain` reads when there is no API server (demo).
        self.recent_pods: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=10_000, ttl=600)
        self.timers = {v: metrics.duration.labels(v) for v in ("filter", "prioritize", "bind", "preempt")}
        # Counter children bound once: labels() takes a lock and a dict lookup on every call.
        self._rejected = {code: metrics.rejections.labels(label) for code, label in REASON_NAMES.items()}
        self._judged = {r: metrics.filter_nodes.labels(r) for r in ("passed", "failed", "unresolvable")}
        # What a pod asks, by (uid, resourceVersion): kube-scheduler sends the same pod to filter and then
        # prioritize, and again after each failed attempt; the spec of one resourceVersion never changes.
        self._asks: LRUCache[tuple[str, str], PodAsk] = LRUCache(maxsize=4096)
        metrics.kernels_native.set(1 if K.NATIVE else 0)
        self.accepting = True
        # Who writes status and counts showback (scheduler/cluster/leader.py; app.py sets it in live mode).
        self.leader_view: Callable[[], dict[str, Any]] = lambda: {"enabled": False, "leader": True}

    # -- app -----------------------------------------------------------------------------------
    def app(self, verbs: bool = True) -> web.Application:
        """The whole API; with verbs=False only health, readiness and metrics (the plain port in TLS
        mode, for kubelet probes and Prometheus, while the verbs need a client certificate)."""
        app = web.Application(client_max_size=self.state.config.server.max_body_bytes,
                              middlewares=[self._errors])
        if verbs:
            app.router.add_post("/scheduler/filter", self._timed("filter", self.filter))
            app.router.add_post("/scheduler/prioritize", self._timed("prioritize", self.prioritize))
            app.router.add_post("/scheduler/bind", self._timed("bind", self.bind))
            app.router.add_post("/scheduler/preempt", self._timed("preempt", self.preempt))
            app.router.add_get("/debug/state", self.debug_state)
            app.router.add_get("/debug/nodes", self.debug_nodes)
            app.router.add_get("/debug/teams", self.debug_teams)
            app.router.add_route("*", "/debug/explain", self.debug_explain)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_view)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        verb = request.path.rsplit("/", 1)[-1]
        try:
            return await handler(request)
        except WireError as exc:
            return web.Response(body=self.refused(verb, exc), status=exc.status, content_type=JSON)
        except web.HTTPRequestEntityTooLarge as exc:
            return web.Response(body=self.too_large(verb, exc.text or ""), status=413, content_type=JSON)
        except web.HTTPMethodNotAllowed as exc:
            return _json({"error": f"{request.method} is not allowed on {request.path}; use "
                                   f"{', '.join(sorted(exc.allowed_methods))}"}, 405)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _json({"error": f"{exc.reason}: {request.path}"}, exc.status)
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            return web.Response(body=self.failed(verb, request.path), status=500, content_type=JSON)

    # The three error replies, shared with the hot-path connection handler (verbs_http.py).
    def refused(self, verb: str, exc: WireError) -> bytes:
        self.metrics.errors.labels(verb, "bad_request").inc()
        return orjson.dumps({"error": exc.reason})

    def too_large(self, verb: str, detail: str) -> bytes:
        self.metrics.errors.labels(verb, "too_large").inc()
        return orjson.dumps({"error": f"request body too large ({detail}); the limit is "
                                      f"{self.state.config.server.max_body_bytes} bytes (server.max_body_bytes)"})

    def failed(self, verb: str, path: str, exc: BaseException | None = None) -> bytes:
        """For an unexpected exception: `exc`, or the one being handled, goes into the log with its trace."""
        log.error("unexpected error in %s", path, exc_info=exc or True)
        self.metrics.errors.labels(verb, "internal").inc()
        return orjson.dumps({"error": "internal error; see Berth's log"})

    def _timed(self, verb: str, fn: Handler) -> Handler:
        timer = self.timers[verb]

        async def handler(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            try:
                return await fn(request)
            finally:
                timer.observe(time.perf_counter() - t0)
        return handler

    def _ask(self, args_pod: dict[str, Any]) -> PodAsk:
        meta = args_pod.get("metadata")
        uid, version = (meta.get("uid"), meta.get("resourceVersion")) if isinstance(meta, dict) else (None, None)
        key = (uid, version) if isinstance(uid, str) and isinstance(version, str) and uid and version else None
        ask = self._asks.get(key) if key else None
        if ask is None:
            ask = pod_ask(args_pod)
            if key:
                self._asks[key] = ask
        if ask.uid:
            self.state.seen[ask.uid] = ask
        if self.fetch_pod is None:
            self.recent_pods[pod_key(ask.namespace, ask.name)] = args_pod
        return ask

    # -- verbs ---------------------------------------------------------------------------------
    # Each verb is bytes in, bytes out (a WireError for bad input): aiohttp's handlers below and the
    # hot-path connection handler (verbs_http.py) both call these.
    def filter_body(self, raw: bytes) -> bytes:
        args = self.names.parse(raw)
        try:
            ask = self._ask(args.pod)
        except PodError as exc:
            self.metrics.errors.labels("filter", "pod").inc()
            return error_filter_reply(args, f"berth: pod cannot be judged: {exc}")
        body = self._filter(args, ask)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("filter %s/%s over %d nodes: %s", ask.namespace, ask.name, len(args.names), body[:300],
                      extra={"pod": f"{ask.namespace}/{ask.name}", "verb": "filter"})
        return body

    def _filter(self, args: ExtenderArgs, ask: PodAsk) -> bytes:
        state, m = self.state, self.metrics
        j = judge(state, ask)
        n = len(args.names)
        if j.admission.error:
            self._judged["unresolvable"].inc(n)
            m.rejections.labels("quota").inc(n)
            sentence = orjson.dumps(f"berth: {j.admission.error}")
            return filter_reply(args, b"", b"", b",".join(f + b":" + sentence for f in args.frags), [])
        verdicts, passed = run_filter(state, j, args.slots)
        if ask.request.other:
            passed = self._other_resources(args, ask, verdicts)
        if passed == n:
            self._judged["passed"].inc(n)
            return filter_reply(args, None, b"", b"")
        return self._partial_reply(args, j, verdicts, passed)

    def _other_resources(self, args: ExtenderArgs, ask: PodAsk, verdicts: bytearray) -> int:
        """Extended resources other than GPUs are rare: checked here, off the kernel path. Berth does
        not track their use, so this only rejects nodes that lack them altogether."""
        t = self.state.table
        for i, s in enumerate(args.slots):
            if verdicts[i] == K.OK:
                facts = t.facts[s]
                have = facts.other_alloc if facts else {}
                if any(have.get(k, 0) < v for k, v in ask.request.other.items()):
                    verdicts[i] = OTHER_RESOURCE
        return verdicts.count(K.OK)

    def _partial_reply(self, args: ExtenderArgs, j: Judgement, verdicts: bytearray, passed: int) -> bytes:
        """Some nodes failed: group them by sentence (kernel), word each group once, write the maps."""
        r = j.ask.request
        ids = array("i", bytes(4 * len(verdicts)))
        groups = K.reason_ids(self.state.table, args.slots, verdicts, r.cpu, r.memory, r.gpu, ids)
        reasons = Reasons(self.state, j)
        worded = [reasons.of(code, slot) if code != K.UNKNOWN else (UNKNOWN_NODE, False) for code, slot in groups]
        texts = [orjson.dumps(text) for text, _ in worded]
        hard = bytes(int(h) for _, h in worded)
        # Consecutive pods of one team see the same failures on the same names (the nodes outside the
        # team's pools above all). ids[i] is -1 exactly where a node passed, so equal ids, sentences and
        # hard flags on the same names make the same reply: reuse the last one written.
        known = args.known
        last = known.partial if known is not None else None
        if last is not None and last[0] == ids and last[1] == texts and last[2] == hard:
            picked, reply, n_failed, n_unres = last[3:]
        else:
            failed, unres, n_failed, n_unres = K.failed_json(args.frags, ids, texts, hard)
            index = [i for i, v in enumerate(verdicts) if v == K.OK] if args.nodes is not None else None
            picked = K.pick_json(args.frags, verdicts, K.OK)
            reply = filter_reply(args, picked, failed, unres, index)
            if known is not None:
                known.partial = (ids, texts, hard, picked, reply, n_failed, n_unres)
        self.names.offer_survivors(args, picked, verdicts)
        for code in {code for code, _ in groups}:
            self._rejected[code].inc(verdicts.count(code))
        judged = self._judged
        judged["passed"].inc(passed)
        judged["failed"].inc(n_failed)
        judged["unresolvable"].inc(n_unres)
        return reply

    def prioritize_body(self, raw: bytes) -> bytes:
        args = self.names.parse(raw)
        try:
            ask = self._ask(args.pod)
        except PodError:  # prioritize has no error field; a pod that cannot be judged gets no preference
            self.metrics.errors.labels("prioritize", "pod").inc()
            scores = array("q", bytes(8 * len(args.names)))
        else:
            scores = run_score(self.state, judge(self.state, ask), args.slots)
            if log.isEnabledFor(logging.DEBUG) and len(scores):
                best = max(range(len(scores)), key=scores.__getitem__)
                log.debug("prioritize %s/%s: best %s (%d of 10) among %d", ask.namespace, ask.name,
                          args.names[best], scores[best], len(scores),
                          extra={"pod": f"{ask.namespace}/{ask.name}", "node": args.names[best], "verb": "prioritize"})
        return K.prioritize_json(args.frags, scores)

    async def bind_body(self, raw: bytes) -> bytes:
        if not self.accepting:
            raise WireError(503, "Berth is shutting down; retry against the new leader")
        args = parse_binding_args(raw)
        try:
            result = await self.binder.bind(args)
        except BindError as exc:
            self.metrics.binds.labels(exc.result).inc()
            log.info("bind %s/%s -> %s refused: %s", args.namespace, args.name, args.node, exc.reason,
                     extra={"pod": f"{args.namespace}/{args.name}", "node": args.node})
            return binding_reply(exc.reason)
        self.metrics.binds.labels(result).inc()
        log.debug("bound %s/%s -> %s (%s)", args.namespace, args.name, args.node, result,
                  extra={"pod": f"{args.namespace}/{args.name}", "node": args.node})
        return binding_reply()

    def preempt_body(self, raw: bytes) -> bytes:
        args = parse_preemption_args(raw)
        try:
            ask = self._ask(args.pod)
        except PodError as exc:
            raise WireError(400, f"ExtenderPreemptionArgs.Pod cannot be judged: {exc}") from None
        decision = preempt.process(self.state, ask, args)
        log.info("preempt for %s/%s: %d candidate nodes, %d kept; spared: %s", ask.namespace, ask.name,
                 len(args.victims), len(decision.victims), "; ".join(sorted(set(decision.refused.values()))) or "none",
                 extra={"pod": f"{ask.namespace}/{ask.name}", "verb": "preempt"})
        for uids in decision.victims.values():
            for uid in uids:
                key = self.state.ledger.by_uid.get(uid)
                entry = self.state.ledger.get(key) if key else None
                self.metrics.victims.labels(entry.team if entry and entry.team else "").inc()
        return preemption_reply(decision.victims, decision.pdb)

    async def filter(self, request: web.Request) -> web.Response:
        return web.Response(body=self.filter_body(await request.read()), content_type=JSON)

    async def prioritize(self, request: web.Request) -> web.Response:
        return web.Response(body=self.prioritize_body(await request.read()), content_type=JSON)

    async def bind(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.bind_body(await request.read()), content_type=JSON)

    async def preempt(self, request: web.Request) -> web.Response:
        return web.Response(body=self.preempt_body(await request.read()), content_type=JSON)

    # -- health, metrics, debug ----------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.state.ready and self.accepting:
            return web.Response(text="ok")
        pending = [k for k, v in self.state.synced.items() if not v] or ["informers"]
        return web.Response(text=f"not ready: waiting for the initial list of {', '.join(pending)}", status=503)

    async def metrics_view(self, request: web.Request) -> web.Response:
        self.refresh_gauges()
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def refresh_gauges(self) -> None:
        s, m = self.state, self.metrics
        m.cache_nodes.set(len(s.table))
        m.cache_pods.set(len(s.ledger))
        m.cache_teams.set(len(s.quotas.teams))
        m.reservations.set(len(s.reservations))
        staleness = s.staleness()
        m.staleness.set(staleness if staleness != float("inf") else -1)

    async def debug_state(self, request: web.Request) -> web.Response:
        out = self.state.summary()
        out.update({"kernels": "native" if K.NATIVE else "python", "nodeNamesCacheHits": self.names.hits,
                    "bindsInFlight": self.binder.in_flight, "leaderElection": self.leader_view()})
        return _json(out)

    async def debug_nodes(self, request: web.Request) -> web.Response:
        t = self.state.table
        nodes = [self.state.node_view(t.slot_of[n]) for n in sorted(t.slot_of)]
        return _json({"count": len(nodes), "nodes": nodes})

    async def debug_teams(self, request: web.Request) -> web.Response:
        return _json({"teams": team_rows(self.state)})

    async def debug_explain(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            pod = orjson.loads(await request.read()) if request.can_read_body else None
        else:
            ns, name = request.query.get("namespace", "default"), request.query.get("pod")
            if not name:
                raise WireError(400, "explain needs ?namespace=..&pod=.. or a POSTed Pod")
            pod = await self.fetch_pod(ns, name) if self.fetch_pod else self.recent_pods.get(pod_key(ns, name))
            if pod is None:
                raise WireError(404, f"pod {pod_key(ns, name)} not found")
        if not isinstance(pod, dict):
            raise WireError(400, "explain: expected a Pod object")
        try:
            ask = pod_ask(pod)
        except PodError as exc:
            raise WireError(400, f"pod cannot be judged: {exc}") from None
        names = request.query.get("nodes")
        return _json(explain(self.state, ask, names.split(",") if names else None))

    # -- housekeeping ----------------------------------------------------------------------------
    async def housekeeping(self, every: float = 1.0, freeze_every: float = 30.0) -> None:
        """Expire unconfirmed reservations, refresh gauges and count GPU-seconds, once a second; keep the
        long-lived cluster picture out of the cyclic collector's way (frozen objects are never rescanned,
        so a full collection does not stall a filter call for tens of milliseconds)."""
        last = last_freeze = time.monotonic()
        synced = False
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            try:
                self.state.reservations.expire()
                self.refresh_gauges()
                account_gpu_seconds(self.state, self.metrics, now - last)
            except Exception:
                log.exception("housekeeping failed")
            if (self.state.ready and not synced) or now - last_freeze > freeze_every:
                if not synced:
                    gc.collect()
                gc.freeze()
                synced, last_freeze = synced or self.state.ready, now
            last = now

