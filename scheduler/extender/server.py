"""The extender, assembled: the verbs (verbs.py), their error replies (errors.py), the read-only views
(debug.py) and the aiohttp application over them (http_app.py). app.py serves it; the hot-path
connection handler (verbs_http.py) is given `berth.verbs`.
"""

from collections.abc import Sequence

from aiohttp import web

from scheduler.cluster.state import ClusterState
from scheduler.extender.debug import DebugViews, InformerStats, PodFetcher
from scheduler.extender.errors import ErrorReplies
from scheduler.extender.http_app import make_app
from scheduler.extender.verbs import Verbs
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder


class Berth:
    def __init__(
        self,
        state: ClusterState,
        metrics: Metrics,
        binder: Binder,
        fetch_pod: PodFetcher | None = None,
        informers: Sequence[InformerStats] = (),
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.binder = binder
        self.errors = ErrorReplies(metrics, state.config.server)
        # Without an API server to ask (demo), explain by name finds the pod among those the verbs saw.
        self.verbs = Verbs(state, metrics, binder, self.errors, by_name=fetch_pod is None)
        self.debug = DebugViews(self.verbs, fetch_pod, informers)

    def app(self, verbs: bool = True) -> web.Application:
        """The whole API; with verbs=False only health, readiness and metrics."""
        return make_app(self.verbs, self.errors, self.debug, serve_verbs=verbs)
