"""One writer per fact, for real: two Berth processes against the real kube-apiserver, both with the shipped
RBAC and leader election on Lease berth-system/berth (short durations). Exactly one is the leader: it writes
TeamQuota status and counts GPU-seconds; the other's berth_team_gpu_seconds_total stands still, and the sum
over both grows as fast as the GPUs held (not twice as fast). kill -9 of the leader: the standby takes over
within the lease duration, writes the status and counts from then on."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as kclient

from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import create_namespace, create_nodes, node, pod
from tests.e2e.prod_helpers import berth_log, delete_group

GROUP = "prod-leader"
TEAM = "prod-leader-team"
GPUS = 6  # held by pods bound from the start
LEASE, RENEW, RETRY = 4, 3.0, 0.5


@pytest.fixture
def world(api: kclient.CoreV1Api, custom: kclient.CustomObjectsApi) -> Iterator[str]:
    ns = create_namespace(api, f"prod-leader-{int(time.time())}")
    create_nodes(api, [node("leader-a", GROUP, gpus=8)])
    for i, gpus in enumerate((4, 2)):
        api.create_namespaced_pod(
            ns,
            pod(
                f"held-{i}",
                GROUP,
                gpus=gpus,
                cpu="100m",  # type: ignore[arg-type]
                node_name="leader-a",
            ),
        )
    custom.create_cluster_custom_object(
        "berth.dev",
        "v1alpha1",
        "teamquotas",
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "TeamQuota",
            "metadata": {"name": TEAM},
            "spec": {"namespaces": [ns], "resources": {"nvidia.com/gpu": {"guaranteed": 8}}},
        },
    )
    try:
        yield ns
    finally:
        custom.delete_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", TEAM)
        delete_group(api, ns, GROUP)


@pytest.fixture
def pair(cp: h.ControlPlane, world: str) -> Iterator[list[BerthHandle]]:
    config = cp.dir / "berth-leader.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "quotas": {"status_interval_seconds": 0.5},
                "leader_election": {
                    "lease_duration_seconds": LEASE,
                    "renew_deadline_seconds": RENEW,
                    "retry_period_seconds": RETRY,
                },
            }
        )
    )
    made: list[BerthHandle] = []
    try:
        for name in ("a", "b"):
            handle = BerthHandle(
                cp,
                h.free_port(),
                cp.berth_kubeconfig,  # type: ignore[attr-defined]
                name=f"berth-leader-{name}",
                extra=["--config", str(config), "--log-level", "debug"],
            )
            made.append(handle)
            handle.start()
        yield made
    finally:
        for handle in made:
            handle.stop()


def gpu_seconds(b: BerthHandle) -> float:
    return b.metric("berth_team_gpu_seconds_total", team=TEAM)  # other tests leave pods of their own


def status_writes(b: BerthHandle) -> int:
    assert b.proc is not None
    return sum(1 for rec in berth_log(b.proc) if rec.get("msg") == f"status of TeamQuota {TEAM} written")


def holder(api: kclient.CoreV1Api) -> str:
    lease = kclient.CoordinationV1Api(api.api_client).read_namespaced_lease("berth", "berth-system")
    return str(lease.spec.holder_identity or "") if lease.spec else ""


def test_one_writer_and_takeover_after_kill(
    api: kclient.CoreV1Api, custom: kclient.CustomObjectsApi, world: str, pair: list[BerthHandle]
) -> None:
    # A Berth of an earlier test, killed, may still hold the Lease (15 s by default): wait that out.
    leaders = h.wait_until(lambda: [b for b in pair if b.metric("berth_leader") == 1], 30, "a Berth leader")
    assert len(leaders) == 1, "two leaders of one Lease"
    leader, standby = leaders[0], next(b for b in pair if b is not leaders[0])
    assert standby.metric("berth_leader") == 0
    view = leader.get("/debug/state")["leaderElection"]
    assert view["enabled"] and view["leader"] and view["holder"] == view["identity"] == holder(api)
    # The standby reads the Lease once a retry period: it may still name an earlier holder for that long.
    h.wait_until(
        lambda: standby.get("/debug/state")["leaderElection"]["holder"] == view["identity"],
        10,
        "the standby to see the new holder",
    )
    h.wait_until(lambda: status_writes(leader) >= 1, 10, "the leader to write TeamQuota status")
    got: dict[str, Any] = custom.get_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", TEAM)  # type: ignore[assignment]
    assert got.get("status", {}).get("used", {}).get("nvidia.com/gpu") == str(GPUS), got.get("status")

    # Over a few seconds only the leader counts, and the sum grows by the GPUs held times the time.
    before = {id(b): gpu_seconds(b) for b in pair}
    t0 = time.monotonic()
    time.sleep(4)
    after = {id(b): gpu_seconds(b) for b in pair}
    elapsed = time.monotonic() - t0
    assert after[id(standby)] == before[id(standby)] == 0, "the standby counted GPU-seconds"
    grown = sum(after.values()) - sum(before.values())
    assert 0.5 * GPUS * elapsed <= grown <= 1.5 * GPUS * elapsed, (grown, GPUS, elapsed)  # both: 2x
    assert status_writes(standby) == 0, "the standby wrote TeamQuota status"
    # The standby still serves the verbs from a warm cache.
    assert standby.node("leader-a")["free"]["nvidia.com/gpu"] == 8 - GPUS

    leader.kill()  # SIGKILL: the Lease is not handed back
    killed = time.monotonic()
    h.wait_until(lambda: standby.metric("berth_leader") == 1, LEASE + 5, "the standby to take over", every=0.1)
    took = time.monotonic() - killed
    print(f"standby took over {took:.1f}s after the kill (lease {LEASE}s, retry {RETRY}s)")
    assert took <= LEASE + 2 * RETRY + 1, took
    assert holder(api) == standby.get("/debug/state")["leaderElection"]["identity"]
    # The status the old leader wrote is current, so the new one writes only once usage changes.
    api.create_namespaced_pod(
        world,
        pod("held-after", GROUP, gpus=1, cpu="100m", node_name="leader-a"),  # type: ignore[arg-type]
    )
    h.wait_until(lambda: status_writes(standby) >= 1, 10, "the new leader to write TeamQuota status")
    got = custom.get_cluster_custom_object("berth.dev", "v1alpha1", "teamquotas", TEAM)  # type: ignore[assignment]
    assert got.get("status", {}).get("used", {}).get("nvidia.com/gpu") == str(GPUS + 1), got.get("status")
    start = gpu_seconds(standby)
    time.sleep(2)
    assert gpu_seconds(standby) > start, "the new leader counts GPU-seconds"
