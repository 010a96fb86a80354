"""The parts of `make bench-quality-e2e` that need no control plane: how a watch event is read, the pod
objects both schedulers get, the mirror of the cluster, and the shipped configurations it runs with."""

from pathlib import Path

import pytest
import yaml

from loadtests.quality_e2e import (
    BOUND,
    DELETED,
    UNSCHEDULABLE,
    Mirror,
    node_object,
    outcome,
    parse_args,
    pod_object,
)
from loadtests.trace_policies import Ask
from loadtests.trace_workload import NodeSpec, TracePod
from scheduler.model.podspec import pod_ask
from tests.e2e import shipped


def _pod(**status: object) -> dict[str, object]:
    return {"metadata": {"name": "p"}, "spec": {}, "status": status}


def test_outcome_reads_bound_unschedulable_and_deleted() -> None:
    assert outcome("MODIFIED", {"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}}) == (BOUND, "n1")
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
    assert outcome("MODIFIED", _pod(conditions=[cond])) == (UNSCHEDULABLE, "0/3 nodes")
    assert outcome("DELETED", _pod()) == (DELETED, "")
    assert outcome("ADDED", _pod(phase="Pending")) is None


def test_a_scheduler_error_is_an_error_of_the_run_not_a_failed_pod() -> None:
    cond = {"type": "PodScheduled", "status": "False", "reason": "SchedulerError", "message": "extender 500"}
    with pytest.raises(RuntimeError, match="SchedulerError"):
        outcome("MODIFIED", _pod(conditions=[cond]))


def test_pod_objects_carry_the_model_for_both_schedulers() -> None:
    p = TracePod(0, "pod-00000", 4000, 8192, 1, 500, ("T4",))
    whole, shared = pod_object(p, sharing=False), pod_object(p, sharing=True)
    assert pod_ask(whole).request.gpu == 1  # without sharing a fraction holds a whole GPU
    assert shared["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "500"  # replicas = milli
    assert whole["metadata"]["annotations"]["berth.dev/gpu-models"] == "T4"
    terms = whole["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["T4", "T4-SHARED"]
    assert "affinity" not in pod_object(TracePod(1, "cpu", 1000, 1024, 0, 0, ()), sharing=False)["spec"]


def test_node_objects_are_the_simulators() -> None:
    n = NodeSpec(0, "node-0000-8xg3", 8, "G3", 128, 1024, (tuple(range(8)),))
    obj = node_object(n, sharing=True)
    assert obj["status"]["allocatable"]["nvidia.com/gpu"] == "8000"
    assert obj["metadata"]["labels"]["nvidia.com/gpu.replicas"] == "1000"


def test_mirror_books_berths_devices_and_says_when_it_cannot() -> None:
    nodes = [NodeSpec(0, "n0", 2, "T4", 16, 64, None)]
    m = Mirror(nodes, sharing=False)
    one = Ask.of(TracePod(0, "a", 1000, 1024, 1, 1000, ()), sharing=False)
    assert m.apply(one, "n0", "1")[1] == ""
    assert list(m.c.gpu[0, :2]) == [1000, 0]
    again = Ask.of(TracePod(1, "b", 1000, 1024, 1, 1000, ()), sharing=False)
    assert "not free in the mirror" in m.apply(again, "n0", "1")[1]  # GPU 1 is taken: a disagreement
    assert m.c.gpu[0].sum() == 0  # booked anyway, as near as it can


def test_shipped_configs_are_read_not_invented(tmp_path: Path) -> None:
    ext = shipped.extender_settings()
    deployed = yaml.safe_load(shipped.DEPLOYED_SCHEDULER_CONFIG.read_text())["extenders"][0]
    assert ext["weight"] == deployed["weight"] and ext["nodeCacheCapable"] == deployed["nodeCacheCapable"]
    berth = yaml.safe_load(shipped.berth_config(tmp_path / "b.yaml", 1234).read_text())
    assert berth["server"]["port"] == 1234 and berth["server"]["health_port"] == 0
    assert berth["scoring"] == yaml.safe_load(shipped.BERTH_CONFIG.read_text())["scoring"]


def test_args_scale_the_pool_with_the_cluster() -> None:
    assert parse_args(["--scale", "0.1"]).pods == 815
    assert parse_args([]).pods == 8150
    with pytest.raises(SystemExit):
        parse_args(["--scale", "0"])
