"""Faults in the middle of bursts of GPU pods, with the real kube-apiserver and kube-scheduler:

(a) the API server restarted mid-burst; (b) Berth's watches expired for real (410 Gone) while it was frozen:
the API server compacted the history it was watching from, and Berth recovers by a relist; (c) Berth killed
(SIGKILL) and started again mid-burst. After each, every pod is bound, no GPU index is held twice, no node
holds more GPUs than it has (sampled from the API server every 0.2 s during the bursts, and checked on a fresh
list at the end), and Berth's cache equals a fresh list of the API server."""

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import BERTH, create_namespace, create_nodes, node, pod
from tests.e2e.prod_helpers import (
    GPU_IDS,
    GpuSampler,
    assert_cache_matches,
    assert_gpu_invariants,
    berth_log,
    burst,
    create_pod,
    delete_group,
    wait_all_bound,
    watch_expired,
)

SIZES = [1, 2, 1, 4, 1, 1] * 4  # 24 pods, 40 GPUs on 6 nodes of 8: they all fit
BERTH_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"  # Berth's pod informer selector


def _group(api: kclient.CoreV1Api, group: str, count: int) -> tuple[str, dict[str, int]]:
    nodes = {f"{group}-{i}": 8 for i in range(count)}
    create_nodes(api, [node(name, group, gpus=gpus) for name, gpus in nodes.items()])
    return create_namespace(api, f"{group}-{int(time.time())}"), nodes


def _pod_lists(berth: BerthHandle) -> int:
    return int(berth.get("/debug/state")["informers"]["pods"]["lists"])


def test_apiserver_restart_mid_burst(
    cp: h.ControlPlane, api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc
) -> None:
    group = "fault-api"
    ns, nodes = _group(api, group, 6)
    try:
        lists = _pod_lists(berth)
        restart = threading.Thread(target=cp.restart_apiserver, daemon=True)
        t0 = time.monotonic()
        with GpuSampler(api, nodes) as sampler:
            # The restart runs beside the burst: creates fail and are retried while the API server is away,
            # while kube-scheduler and Berth lose their watches with binds in flight.
            names = burst(api, ns, group, SIZES, BERTH, prefix="api", during={6: restart.start}, every=0.1)
            restart.join(60)
            assert not restart.is_alive(), "the API server did not come back"
            wait_all_bound(api, ns, names, timeout=90)
        print(
            f"API server restart: all bound after {time.monotonic() - t0:.1f}s; sampler {sampler.samples} "
            f"samples, {sampler.errors} failed reads"
        )
        sampler.assert_clean()
        assert sampler.errors > 0, "the sampler never saw the API server away: the restart was not mid-burst"
        assert_gpu_invariants(api, nodes)
        assert _pod_lists(berth) > lists, "Berth recovers its broken watches by relisting"
        assert_cache_matches(berth, api, group)
    finally:
        delete_group(api, ns, group)


def test_berth_killed_and_restarted_mid_burst(
    api: kclient.CoreV1Api, berth: BerthHandle, berth_scheduler: h.Proc
) -> None:
    group = "fault-berth"
    ns, nodes = _group(api, group, 6)
    try:
        old_pid = berth.proc.popen.pid if berth.proc and berth.proc.popen else None

        def restart_berth() -> None:
            berth.kill()  # SIGKILL: no graceful shutdown, reservations and in-flight binds lost
            time.sleep(1)
            berth.start()

        restart = threading.Thread(target=restart_berth, daemon=True)
        with GpuSampler(api, nodes) as sampler:
            names = burst(api, ns, group, SIZES, BERTH, prefix="berth", during={8: restart.start}, every=0.1)
            restart.join(60)
            assert not restart.is_alive(), "Berth did not come back"
            wait_all_bound(api, ns, names, timeout=90)
        sampler.assert_clean()
        assert berth.proc is not None and berth.proc.popen is not None and berth.proc.popen.pid != old_pid
        assert berth.metric("berth_binds_total", result="bound") > 0, "the new Berth bound the rest"
        assert_gpu_invariants(api, nodes)
        assert_cache_matches(berth, api, group)
    finally:
        delete_group(api, ns, group)


# -- (b) a watch that expires for real --------------------------------------------------------------------------
#
# A watch expires (410 Gone) when it is resumed from a resourceVersion whose history the API server no longer
# has. The API server compacts etcd's history every --etcd-compaction-interval (5 min by default; 2 s here),
# and with the watch cache disabled for pods, a pod watch is served from etcd, so compaction is what expires
# it. An open watch never expires, even when its client is frozen (the API server and etcd keep buffering),
# and the API server ends watches only at their timeoutSeconds (Berth asks 300 s) or when it shuts down; the
# test therefore restarts the API server while Berth is frozen (a rolling API server update), with
# --shutdown-watch-termination-grace-period so the watches end cleanly, as a real graceful shutdown does.
# Berth resumes from its last resourceVersion, gets 410 (the test checks the API server answers 410 for that
# version first) and must relist.
EXPIRING_FLAGS = [
    "--etcd-compaction-interval=2s",
    "--watch-cache-sizes=pods#0",
    "--shutdown-watch-termination-grace-period=3s",
]
GONE_SCHEDULER = "berth-gone"


@pytest.fixture
def expiring() -> Iterator[dict[str, Any]]:
    """A control plane of its own (it is restarted and compacts every 2 s), with Berth and a kube-scheduler."""
    plane = h.ControlPlane(apiserver_flags=EXPIRING_FLAGS)
    handles: dict[str, Any] = {"plane": plane}
    try:
        plane.start()
        kubeconfig = plane.install_berth_identity()
        handles["api"] = kclient.CoreV1Api(kconfig.new_client_from_config(str(plane.admin_kubeconfig)))
        handles["berth"] = BerthHandle(plane, h.free_port(), kubeconfig, name="berth-gone")
        handles["berth"].start()
        cfg = h.scheduler_config(plane, plane.dir / "sched-gone.yaml", handles["berth"].url, GONE_SCHEDULER)
        handles["scheduler"] = h.start_scheduler(plane, "kube-scheduler-gone", cfg)
        yield handles
    finally:
        if "berth" in handles and handles["berth"].proc and handles["berth"].proc.alive:
            os.kill(handles["berth"].proc.popen.pid, signal.SIGCONT)
            handles["berth"].stop()
        if "scheduler" in handles:
            handles["scheduler"].stop()
        plane.stop()
        if os.environ.get("BERTH_E2E_KEEP"):
            print(f"e2e logs kept in {plane.dir}")
        else:
            h.cleanup(plane.dir)


def _fill_to(api: kclient.CoreV1Api, ns: str, group: str, nodes: dict[str, int], held: int) -> list[str]:
    """Pods bound by hand (nodeName) with explicit free GPU indices until every node holds `held` GPUs."""
    used: dict[str, set[int]] = {n: set() for n in nodes}
    for p in api.list_namespaced_pod(ns).items:
        ids = (p.metadata.annotations or {}).get(GPU_IDS)
        if p.spec.node_name in used and ids:
            used[p.spec.node_name] |= {int(i) for i in ids.split(",")}
    made = []
    for name, gpus in nodes.items():
        for gpu in sorted(set(range(gpus)) - used[name])[: held - len(used[name])]:
            pod_name = f"by-hand-{name}-{gpu}"
            create_pod(
                api,
                ns,
                pod(
                    pod_name,
                    group,
                    gpus=1,
                    cpu="100m",
                    node_name=name,
                    scheduler=GONE_SCHEDULER,
                    annotations={GPU_IDS: str(gpu)},
                ),
            )
            made.append(pod_name)
    return made


def test_expired_watch_is_recovered_by_a_relist(expiring: dict[str, Any]) -> None:
    plane: h.ControlPlane = expiring["plane"]
    api: kclient.CoreV1Api = expiring["api"]
    berth: BerthHandle = expiring["berth"]
    assert berth.proc is not None and berth.proc.popen is not None
    group = "fault-gone"
    ns, nodes = _group(api, group, 4)  # 32 GPUs

    before = burst(api, ns, group, [2, 1, 1, 2], GONE_SCHEDULER, prefix="before")
    wait_all_bound(api, ns, before, timeout=60)
    assert_cache_matches(berth, api, group)
    informer = berth.get("/debug/state")["informers"]["pods"]
    frozen_at = time.time()

    os.kill(berth.proc.popen.pid, signal.SIGSTOP)
    try:
        # While Berth is frozen: pods it knows are deleted, pods it has never seen take GPUs (explicit indices,
        # some of them the deleted pods'), and CPU-only pods come and go.
        for name in before:
            if name.endswith("g2"):
                api.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        by_hand = _fill_to(api, ns, group, nodes, held=4)
        # (Kept to ~50 watch events, ~120 KB: they wait in the frozen Berth's socket buffers, and the API
        # server's watch handler must not block on a full socket when it shuts down.)
        for i in range(24):
            create_pod(
                api, ns, pod(f"churn-{i}", group, cpu="100m", node_name=f"{group}-{i % 4}", scheduler=GONE_SCHEDULER)
            )
        for i in range(0, 24, 2):
            api.delete_namespaced_pod(f"churn-{i}", ns, grace_period_seconds=0)
        last_pod_rv = api.list_pod_for_all_namespaces(field_selector=BERTH_PODS).metadata.resource_version
        # A write after the last pod change, so that compaction can pass every pod event Berth may have seen.
        api.create_namespaced_config_map(ns, {"metadata": {"name": "after-the-churn"}})
        assert int(informer["resourceVersion"]) <= int(last_pod_rv)
        h.wait_until(
            lambda: watch_expired(plane, "/api/v1/pods", last_pod_rv, BERTH_PODS),
            30,
            "the API server to answer 410 Gone for the history Berth watches from",
            every=0.5,
        )
        assert watch_expired(plane, "/api/v1/pods", informer["resourceVersion"], BERTH_PODS)
        plane.restart_apiserver()  # ends the frozen Berth's watches (cleanly, see EXPIRING_FLAGS)
    finally:
        os.kill(berth.proc.popen.pid, signal.SIGCONT)

    h.wait_until(
        lambda: berth.get("/debug/state")["informers"]["pods"]["lists"] > informer["lists"], 30, "Berth to relist pods"
    )
    expired = [
        r
        for r in berth_log(berth.proc)
        if r.get("msg") == "pods: watch expired (410 Gone); relisting"
        and r.get("ts", "") >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(frozen_at))
    ]
    assert expired, "Berth relisted pods, but not because the API server said 410 Gone:\n" + berth.proc.tail(20)
    assert_cache_matches(berth, api, group)
    print(
        f"410 Gone and relist: pods informer {informer} -> {berth.get('/debug/state')['informers']['pods']}; "
        f"{len(by_hand)} pods bound by hand while Berth was frozen"
    )

    # Berth schedules on what it relisted: every node has exactly 4 GPUs left, and the burst takes them all.
    # A stale cache would hand out an index a by-hand pod holds, or keep a deleted pod's GPUs and leave pods
    # pending.
    with GpuSampler(api, nodes) as sampler:
        after = burst(api, ns, group, [4, 4, 2, 2, 2, 2], GONE_SCHEDULER, prefix="after", every=0.3)
        wait_all_bound(api, ns, after, timeout=60)
    sampler.assert_clean(min_samples=3)
    assert_gpu_invariants(api, nodes)
    assert_cache_matches(berth, api, group)
    assert all(not free["nvidia.com/gpu"] for free in (berth.node(n)["free"] for n in nodes))
