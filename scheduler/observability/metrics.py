"""Prometheus metrics (names follow Prometheus conventions, prefix berth_). Each Berth process owns
one registry, so tests can run several servers in one interpreter."""

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets tuned to an extender that answers in well under a millisecond.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.duration = Histogram(
            "berth_request_duration_seconds",
            "Time to answer one extender call, by verb.",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.filter_nodes = Counter(
            "berth_filter_nodes_total", "Nodes judged by filter, by result.", ["result"], registry=r
        )
        self.rejections = Counter(
            "berth_rejections_total", "Nodes rejected by filter, by reason.", ["reason"], registry=r
        )
        self.binds = Counter("berth_binds_total", "Bind calls, by result.", ["result"], registry=r)
        self.errors = Counter(
            "berth_errors_total", "Requests answered with an error, by verb and kind.", ["verb", "kind"], registry=r
        )
        self.cache_nodes = Gauge("berth_cache_nodes", "Nodes in Berth's cache.", registry=r)
        self.cache_pods = Gauge("berth_cache_pods", "Pods holding resources in Berth's ledger.", registry=r)
        self.cache_teams = Gauge("berth_cache_teams", "TeamQuotas in Berth's cache.", registry=r)
        self.reservations = Gauge(
            "berth_reservations", "Binds reserved but not yet confirmed by a watch event.", registry=r
        )
        self.staleness = Gauge(
            "berth_cache_staleness_seconds", "Seconds since the last informer event or bookmark.", registry=r
        )
        self.team_used = Gauge("berth_team_used", "Resources a team holds.", ["team", "resource"], registry=r)
        self.team_guaranteed = Gauge(
            "berth_team_guaranteed", "A team's guaranteed quota.", ["team", "resource"], registry=r
        )
        self.team_max = Gauge("berth_team_max", "A team's maximum quota.", ["team", "resource"], registry=r)
        self.team_borrowed = Gauge(
            "berth_team_borrowed", "What a team holds above its guaranteed quota.", ["team", "resource"], registry=r
        )
        # Counted by one replica only, the leader (scheduler/cluster/leader.py): a sum over both
        # replicas' series would count every GPU-second twice. The standby's series stands still.
        self.counts_showback: Callable[[], bool] = lambda: True
        self.gpu_seconds = _OnlyWhen(
            Counter(
                "berth_team_gpu_seconds_total",
                "GPU-seconds held, by team and GPU model (counted by the leader only).",
                ["team", "model"],
                registry=r,
            ),
            lambda: self.counts_showback(),
        )
        self.leader = Gauge(
            "berth_leader",
            "1 while this replica holds Berth's Lease and so writes TeamQuota "
            "status and counts GPU-seconds; 0 on the standby.",
            registry=r,
        )
        self.leader.set(1)  # a lone process (demo, or leader_election.enabled: false) is the writer
        self.victims = Counter(
            "berth_preemption_victims_total", "Pods Berth agreed to preempt, by their team.", ["team"], registry=r
        )
        self.gpu_mismatches = Counter(
            "berth_gpu_assignment_mismatch_total",
            "Pods whose GPUs, as the node agent reports them, differ from what Berth's ledger held "
            "(the ledger then counts the reported ones).",
            registry=r,
        )
        self.gpu_mismatches_seen = 0  # state.truth.mismatches already counted (refresh_gauges adds the rest)
        self.kernels_native = Gauge(
            "berth_kernels_native", "1 when the Cython kernels serve, 0 for the twins.", registry=r
        )


class _Ignored:
    def inc(self, amount: float = 1) -> None:
        return None


class _OnlyWhen:
    """A labelled Counter whose increments count only while `gate()` is true."""

    def __init__(self, counter: Counter, gate: Callable[[], bool]) -> None:
        self.counter = counter
        self.gate = gate

    def labels(self, *values: str) -> Any:
        return self.counter.labels(*values) if self.gate() else _IGNORED


_IGNORED = _Ignored()
