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

    async def debug_nodes(self, request: web.Request) -> web.Response:
        t = self.state.table
        nodes = [self.state.node_view(t.slot_of[n]) for n in sorted(t.slot_of)]
        return json_response({"count": len(nodes), "nodes": nodes})

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
            raise WireError(404, f"pod {pod_key(ns, name)} not found")
        return ask


async def _posted(request: web.Request) -> Any:
    """The POSTed object: JSON, else YAML (safe_load: plain data only). The body is bounded by
    server.max_body_bytes like every other (a larger one is a 413 before it is read)."""
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as exc:
        raise WireError(400, f"explain: the body is neither JSON nor YAML: {' '.join(str(exc).split())}") from None


def _ask_of(pod: Any) -> PodAsk:
    if not isinstance(pod, dict):
        raise WireError(400, "explain: expected a Pod object")
    try:
        return pod_ask(pod)
    except PodError as exc:
        raise WireError(400, f"pod cannot be judged: {exc}") from None
