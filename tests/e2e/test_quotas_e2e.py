"""Team quotas with the real kube-scheduler: a burst far beyond the quotas, a Berth restart in the
middle, reclaim by preemption, and the API server sampled throughout."""

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client as kclient

from scheduler.model.quantity import whole
from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import create_namespace, create_nodes, node, pod
from tests.e2e.test_live_cluster import events_for

GUARANTEED, MAX = 16, 24


def team_quota(name: str, ns: str, pool: str) -> dict:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": name},
        "spec": {
            "namespaces": [ns],
            "pools": [pool],
            "cohort": "e2e-cohort",
            "resources": {"nvidia.com/gpu": {"guaranteed": GUARANTEED, "max": MAX}},
        },
    }


class Sampler(threading.Thread):
    """Reads the API server every 0.2 s: GPUs held per team (bound pods, terminating ones included)."""

    def __init__(self, api: kclient.CoreV1Api, namespaces: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.api, self.namespaces = api, namespaces
        self.samples: list[dict[str, int]] = []
        self.stop = threading.Event()

    def held(self) -> dict[str, int]:
        out = {}
        for team, ns in self.namespaces.items():
            out[team] = sum(
                whole((c.resources.limits or {}).get("nvidia.com/gpu", "0"))
                for p in self.api.list_namespaced_pod(ns).items
                if p.spec.node_name
                for c in p.spec.containers
            )
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.held())
            time.sleep(0.2)


class Kubelet(threading.Thread):
    """Stands in for the kubelets these nodes do not have: a pod deleted with a grace period (as
    preemption deletes its victims) stays Terminating, holding its GPUs, until a kubelet confirms it.
    Confirming a moment later, as a real kubelet does, makes the delete event reach kube-scheduler after
    the preemptor waits for it (with grace 0 the victims vanish inside the preemptor's own cycle)."""

    def __init__(self, api: kclient.CoreV1Api, namespaces: list[str]) -> None:
        super().__init__(daemon=True)
        self.api, self.namespaces = api, namespaces
        self.stop = threading.Event()
        self.confirmed = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for ns in self.namespaces:
                for p in self.api.list_namespaced_pod(ns).items:
                    if p.metadata.deletion_timestamp:
                        time.sleep(0.5)
                        with contextlib.suppress(kclient.ApiException):
                            self.api.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)
                            self.confirmed += 1
            time.sleep(0.2)


@pytest.fixture(scope="module")
def teams(cp: h.ControlPlane, api: kclient.CoreV1Api, custom: kclient.CustomObjectsApi) -> Iterator[dict[str, str]]:
    suffix = int(time.time())
    nss = {"team-a": create_namespace(api, f"team-a-{suffix}"), "team-b": create_namespace(api, f"team-b-{suffix}")}
    cp.apply(
        [
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": n}, "value": v}
            for n, v in (("e2e-low", 100), ("e2e-high", 1000))
        ]
    )
    for team, pool in (("team-a", "qa"), ("team-b", "qb")):
        custom.create_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", team_quota(team, nss[team], pool))
    create_nodes(api, [node(f"{p}-{i}", "quota", gpus=8, pool=p) for p in ("qa", "qb") for i in range(2)])
    yield nss
    for team in nss:
        custom.delete_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", team)


def bound(api: kclient.CoreV1Api, ns: str) -> int:
    return sum(1 for p in api.list_namespaced_pod(ns).items if p.spec.node_name and not p.metadata.deletion_timestamp)


def test_quotas_hold_under_a_burst_with_restart_and_reclaim(
    cp: h.ControlPlane, api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc, teams: dict[str, str]
) -> None:
    h.wait_until(lambda: berth.get("/debug/state")["teams"] >= 2, 10, "Berth sees the TeamQuotas")
    sampler, kubelet = Sampler(api, teams), Kubelet(api, list(teams.values()))
    sampler.start()
    kubelet.start()
    try:
        # team-a: 32 one-GPU pods at once, far beyond its max of 24; Berth is killed in the middle.
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(
                    api.create_namespaced_pod,
                    teams["team-a"],
                    pod(f"a-{i}", "quota", gpus=1, cpu="100m", priority_class="e2e-low", grace_period=30),
                )
                for i in range(32)
            ]
            time.sleep(1.0)
            berth.kill()
            berth.start()
            for f in futures:
                f.result()
        h.wait_until(lambda: bound(api, teams["team-a"]) == MAX, 120, "team-a to reach its max")
        time.sleep(2)
        assert bound(api, teams["team-a"]) == MAX
        refused = h.wait_until(
            lambda: [
                m
                for p in api.list_namespaced_pod(teams["team-a"]).items
                if not p.spec.node_name
                for m in events_for(api, teams["team-a"], p.metadata.name)
                if "FailedScheduling" in m
            ],
            60,
            "FailedScheduling events",
        )
        sentence = f"team team-a: nvidia.com/gpu {MAX} used + 1 requested > max {MAX}"
        assert any(sentence in m for m in refused), refused[:3]

        # team-b lent its idle pool to team-a; now it wants its guaranteed 16 back.
        for i in range(GUARANTEED):
            api.create_namespaced_pod(
                teams["team-b"], pod(f"b-{i}", "quota", gpus=1, cpu="100m", priority_class="e2e-high")
            )
        try:
            h.wait_until(lambda: bound(api, teams["team-b"]) == GUARANTEED, 120, "team-b to get its guaranteed share")
        except TimeoutError:
            print("last sample", sampler.samples[-1], "berth teams", berth.get("/debug/teams"))
            for ns in teams.values():
                for p in api.list_namespaced_pod(ns).items:
                    print(
                        p.metadata.name,
                        p.spec.node_name,
                        p.metadata.deletion_timestamp,
                        p.status.nominated_node_name,
                        (p.metadata.annotations or {}).get("berth.dev/borrowing"),
                    )
            raise
        assert bound(api, teams["team-a"]) >= GUARANTEED, "reclaim never takes team-a below its guarantee"
        # team-b's pool held 8 of team-a's borrowed pods: only preemption can have freed them.
        assert berth.metric("berth_preemption_victims_total", team="team-a") >= MAX - GUARANTEED
        assert kubelet.confirmed >= MAX - GUARANTEED, "the victims were evicted, not left Terminating"
        assert bound(api, teams["team-a"]) == GUARANTEED

        out = h.wait_until(lambda: _teamquota_table(cp, f"{GUARANTEED}"), 20, "kubectl get teamquotas")
        print(out)
    finally:
        sampler.stop.set()
        kubelet.stop.set()
        sampler.join()
        kubelet.join()
    assert sampler.samples, "the sampler ran"
    for s in sampler.samples:
        assert s["team-a"] <= MAX and s["team-b"] <= MAX, s
        assert s["team-a"] + s["team-b"] <= 2 * GUARANTEED, f"cohort above its total: {s}"


def _teamquota_table(cp: h.ControlPlane, used: str) -> str | None:
    """`kubectl get teamquotas` once Berth's status shows both teams at `used` GPUs."""
    path = r"{range .items[*]}{.metadata.name}={.status.used.nvidia\.com/gpu}{' '}{end}"
    got = dict(kv.split("=") for kv in cp.kubectl("get", "teamquotas", "-o", f"jsonpath={path}").stdout.split())
    if got.get("team-a") != used or got.get("team-b") != used:
        return None
    table = cp.kubectl("get", "teamquotas", "team-a", "team-b").stdout
    assert "GPUS USED" in table.splitlines()[0].upper(), table
    return table
