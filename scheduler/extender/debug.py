"""Health, readiness, the metrics view and the /debug views (state, nodes, teams, explain).

Read-only: these look at the state, the verbs' caches and the informers the process started; none
of them is on the verbs' path.
"""

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson
import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler import kernels as K
from scheduler.cluster.state import ClusterState, pod_key
from scheduler.extender.verbs import Verbs
from scheduler.extender.wire import WireError
from scheduler.model.podspec import PodAsk, PodError, pod_ask
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import team_rows
from scheduler.observability.stalls import RECORDER as STALLS
from scheduler.policy.placement import explain

JSON = "application/json"
PodFetcher = Callable[[str, str], Awaitable[dict[str, Any] | None]]


class InformerStats(Protocol):
    """What /debug/state shows of each informer (cluster/informer.Informer has these)."""

    resource: str
    rv: str
    lists: int
    events: int


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON)


def refresh_gauges(state: ClusterState, metrics: Metrics) -> None:
    s, m = state, metrics
    m.cache_nodes.set(len(s.table))
    m.cache_pods.set(len(s.ledger))
    m.cache_teams.set(len(s.quotas.teams))
    m.reservations.set(len(s.reservations))
    staleness = s.staleness()
    m.staleness.set(staleness if staleness != float("inf") else -1)
    if s.truth.mismatches > m.gpu_mismatches_seen:  # cluster/truth.py counts; the Counter follows it
        m.gpu_mismatches.inc(s.truth.mismatches - m.gpu_mismatches_seen)
        m.gpu_mismatches_seen = s.truth.mismatches


class DebugViews:
    def __init__(
        self, verbs: Verbs, fetch_pod: PodFetcher | None = None, informers: Sequence[InformerStats] = ()
    ) -> None:
        self.verbs = verbs
        self.state = verbs.state
        self.metrics = verbs.metrics
        self.fetch_pod = fetch_pod  # None (demo): explain by name reads the pods the verbs have seen
        self.informers = informers
        # Who writes status and counts showback (cluster/leader.py; app.py sets it in live mode).
        self.leader_view: Callable[[], dict[str, Any]] = lambda: {"enabled": False, "leader": True}
        # The gang queue (admission/loop.AdmissionLoop.view; app.py sets it when admission.enabled).
        self.queue_view: Callable[[], dict[str, Any]] | None = None

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.state.ready and self.verbs.accepting:
            return web.Response(text="ok")
        pending = [k for k, v in self.state.synced.items() if not v] or ["informers"]
        return web.Response(text=f"not ready: waiting for the initial list of {', '.join(pending)}", status=503)

    async def metrics_view(self, request: web.Request) -> web.Response:
        refresh_gauges(self.state, self.metrics)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def debug_state(self, request: web.Request) -> web.Response:
        out = self.state.summary()
        out["informers"] = {
            i.resource: {"resourceVersion": i.rv, "lists": i.lists, "events": i.events} for i in self.informers
        }
        out.update(
            {
                "kernels": "native" if K.NATIVE else "python",
                "nodeNamesCacheHits": self.verbs.names.hits,
                "bindsInFlight": self.verbs.binder.in_flight,
                "leaderElection": self.leader_view(),
            }
        )
        return json_response(out)

    async def debug_queue(self, request: web.Request) -> web.Response:
        """The gang queue, the same JSON as the webhook listener's /debug/queue (docs/gangs.md)."""
        if self.queue_view is None:
            return json_response({"enabled": False, "gangs": [], "reason": "admission.enabled is false"})
        return json_response({"enabled": True, **self.queue_view()})

    async def debug_nodes(self, request: web.Request) -> web.Response:
        """Every node (by name), or those of ?pool=NAME, or those in the pools open to ?team=NAME;
        ?limit=N returns the first N of them (count is still all that matched)."""
        q = request.query
        t, pools = self.state.table, self._pools_asked(q.get("pool"), q.get("team"))
        limit = _limit(q.get("limit"))
        names = sorted(n for n, s in t.slot_of.items() if pools is None or t.pools[t.pool[s]] in pools)
        shown = names if limit is None else names[:limit]
        nodes = [self.state.node_view(t.slot_of[n]) for n in shown]
        return json_response({"count": len(names), "returned": len(nodes), "nodes": nodes})

    def _pools_asked(self, pool: str | None, team: str | None) -> frozenset[str] | None:
        """The pools ?pool= and ?team= allow together (None: any)."""
        allowed = None if pool is None else frozenset([pool])
        if team is not None:
            quotas = self.state.quotas
            if team not in quotas.teams:
                known = ", ".join(sorted(quotas.teams)) or "none"
                raise WireError(404, f"no TeamQuota {team!r} (teams: {known})")
            own = quotas.pools_of(quotas.teams[team])
            allowed = own if allowed is None else allowed & own
        return allowed

    async def debug_teams(self, request: web.Request) -> web.Response:
        return json_response({"teams": team_rows(self.state)})

    async def debug_stalls(self, request: web.Request) -> web.Response:
        """What the event loop did around the slowest verb calls (scheduler/observability/stalls.py);
        ?reset=1 starts the counts afresh after this reading (the benchmark reads one per case)."""
        out = STALLS.snapshot()
        if request.query.get("reset") in ("1", "true"):
            STALLS.reset()
        return json_response(out)

    async def debug_explain(self, request: web.Request) -> web.Response:
        """GET ?namespace=&pod= (from the API server, or the pods the verbs saw in demo), or POST a Pod
        as JSON or YAML (`kubectl get pod -o yaml`)."""
        if request.method == "POST":
            ask = _ask_of(await _posted(request) if request.can_read_body else None)
        else:
            ask = await self._ask_by_name(request)
        names = request.query.get("nodes")
        return json_response(explain(self.state, ask, names.split(",") if names else None))

    async def _ask_by_name(self, request: web.Request) -> PodAsk:
        ns, name = request.query.get("namespace", "default"), request.query.get("pod")
        if not name:
            raise WireError(400, "explain needs ?namespace=..&pod=.. or a POSTed Pod")
        if self.fetch_pod is None:
            ask = self.verbs.seen.by_name(ns, name)
        else:
            pod = await self.fetch_pod(ns, name)
            ask = None if pod is None else _ask_of(pod)
        if ask is None:
            where = "in the API server" if self.fetch_pod else "among the pods sent to filter (demo)"
            raise WireError(
                404,
                f"pod {pod_key(ns, name)} not found {where}; POST the Pod to /debug/explain instead "
                "(JSON or YAML: berth explain -f pod.yaml)",
            )
        return ask


def _limit(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit():
        raise WireError(400, f"limit must be a whole number, not {raw!r}")
    return int(raw)


# What GET / lists: every route of make_app, so a person at the root finds the rest.
ENDPOINTS = {
    "POST /scheduler/filter": "extender verb: the nodes that fit (ExtenderArgs -> ExtenderFilterResult)",
    "POST /scheduler/prioritize": "extender verb: a score 0..10 per node (ExtenderArgs -> HostPriorityList)",
    "POST /scheduler/bind": "extender verb: bind the pod (ExtenderBindingArgs -> ExtenderBindingResult)",
    "POST /scheduler/preempt": "extender verb: victims per node (ExtenderPreemptionArgs -> ...Result)",
    "GET /debug/state": "cache counts, sync and informer state, kernels, leader election",
    "GET /debug/nodes": "nodes with free resources and GPU indices in use; ?pool=, ?team=, ?limit=",
    "GET /debug/teams": "TeamQuota usage, limits, borrowing and conditions",
    "GET /debug/queue": "gangs and queued pods in queue order: phase, reason, members, plan, wait (docs/gangs.md)",
    "GET /debug/stalls": "what the event loop did around slow verb calls: phases, GC pauses, housekeeping, lag",
    "GET /debug/explain": "?namespace=&pod=: per-node verdicts and score parts for a pod (berth explain)",
    "POST /debug/explain": "the same for a POSTed Pod, JSON or YAML (berth explain -f pod.yaml)",
    "GET /healthz": "liveness",
    "GET /readyz": "readiness: 200 once the initial lists are in",
    "GET /metrics": "Prometheus metrics",
}


def index_view(routes: dict[str, str], mode: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET / (and GET /debug): what this port serves (`routes`: route -> what it does), as JSON."""
    body = orjson.dumps({"name": "berth", "mode": mode, "endpoints": routes})

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=JSON)

    return handler


# YAML is parsed in Python on the event loop the verbs share: ~3 s a megabyte (a Pod as kubectl prints it is
# some KB; a max_body_bytes one held the loop for minutes). JSON, parsed natively, has no bound of its own.
YAML_LIMIT = 128 * 1024


class _PodYaml(yaml.SafeLoader):
    """safe_load without aliases: `*a` repeats what `&a` names without its bytes, and nine lines of them
    made a value whose repr (in an error naming it) or JSON takes gigabytes. A Pod manifest has none."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted: a Pod has none", mark)
        return super().compose_node(parent, index)


async def _posted(request: web.Request) -> Any:
    """The POSTed object: JSON, else YAML (plain data only, no aliases, at most YAML_LIMIT bytes). The body
    is bounded by server.max_body_bytes like every other (a larger one is a 413 before it is read)."""
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    if len(raw) > YAML_LIMIT:
        raise WireError(
            413,
            f"explain: {len(raw)} bytes that are not JSON; a YAML body is at most {YAML_LIMIT} bytes "
            "(send a larger Pod as JSON: kubectl get pod -o json)",
        )
    try:
        data = yaml.load(raw, Loader=_PodYaml)  # a SafeLoader: plain data only
        # As JSON would give it: YAML's non-string keys (`1: 2`) as strings, dates as text (they were a 500
        # when the reply was written); a value JSON has no form for (!!binary) is refused.
        return orjson.loads(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS))
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:  # ValueError: an int of 5,000 digits
        raise WireError(400, f"explain: the body is neither JSON nor YAML: {' '.join(str(exc).split())}") from None


def _ask_of(pod: Any) -> PodAsk:
    if not isinstance(pod, dict):
        raise WireError(400, "explain: expected a Pod object")
    try:
        return pod_ask(pod)
    except PodError as exc:
        raise WireError(400, f"pod cannot be judged: {exc}") from None
