"""The device ledger with GPU sharing: fractions held per GPU in milli, never more than one GPU's worth on a
device, shared GPUs filled before idle ones are opened, whole pods kept off shared GPUs, the choice written
at bind and rebuilt from the pods' annotations after a restart; MIG profiles and other extended resources
tracked per node."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.cluster.objects import container, pod
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.model.binding import BindingArgs
from scheduler.model.constants import GPU_MILLI, MAX_GPUS
from scheduler.model.podspec import PodError, pod_ask
from scheduler.policy.binder import Binder, BindError
from tests.kernels.test_sharing_kernels import node


def shared_pod(name: str, gpu: int = 0, shared: int = 0, fraction: str | None = None, **more: int) -> dict[str, Any]:
    limits = {k: str(v) for k, v in {"nvidia.com/gpu": gpu, "nvidia.com/gpu.shared": shared, **more}.items() if v}
    res = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": limits}
    annotations = {"berth.dev/gpu-fraction": fraction} if fraction else {}
    return pod(name, [container("main", "img", res)], namespace="ns", uid=f"uid-{name}", annotations=annotations)


def bind(state: ClusterState, obj: dict[str, Any], on: str) -> dict[str, str]:
    """Reserve as bind does (no API server) and return the annotations bind would write."""
    ask = pod_ask(obj)
    entry = Binder(state, None, None).reserve(ask, BindingArgs(ask.name, ask.namespace, ask.uid, on))
    return Binder.annotations(entry)


def milli(state: ClusterState, name: str) -> list[int]:
    return state.table.device_milli(state.table.slot_of[name])


def test_node_shapes_from_the_device_plugin_and_gfd() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", node("ts", gpus=4, replicas=8))
    state.apply_node("ADDED", node("ren", gpus=2, replicas=5, renamed=True))
    mig = node("mig", gpus=0)
    mig["status"]["allocatable"].update({"nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "2"})
    state.apply_node("ADDED", mig)
    t = state.table
    ts, ren = t.slot_of["ts"], t.slot_of["ren"]
    assert (t.alloc_gpu[ts], t.replicas[ts], t.share_res[ts]) == (4, 8, 0)
    assert (t.alloc_gpu[ren], t.replicas[ren], t.share_res[ren]) == (2, 5, 1)
    view = state.node_view(ts)
    assert view["gpuReplicas"] == 8 and view["gpuSharing"] == "time-slicing" and view["gpuMilliFree"] == 4000
    facts = t.facts[t.slot_of["mig"]]
    assert facts is not None and facts.other_alloc == {"nvidia.com/mig-1g.10gb": 7, "nvidia.com/mig-3g.40gb": 2}


def test_bind_writes_device_and_fraction_and_a_restart_rebuilds_them() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", node("a", gpus=2, replicas=4))
    assert bind(state, shared_pod("w", gpu=4), "a") == {"berth.dev/gpu-ids": "0"}  # 4 replicas: one whole GPU
    assert bind(state, shared_pod("f1", gpu=1), "a") == {"berth.dev/gpu-ids": "1", "berth.dev/gpu-milli": "250"}
    assert bind(state, shared_pod("f2", gpu=1, fraction="0.5"), "a") == {
        "berth.dev/gpu-ids": "1",
        "berth.dev/gpu-milli": "500",
    }
    assert milli(state, "a") == [0, 750]
    # A restart: the same pods, bound, with what bind wrote, in another order.
    fresh = ClusterState(Config())
    for name, ann in (("f2", {"1": "500"}), ("w", {}), ("f1", {"1": "250"})):
        obj = shared_pod(name, gpu=4 if name == "w" else 1, fraction="0.5" if name == "f2" else None)
        obj["spec"]["nodeName"] = "a"
        for dev, m in ann.items():
            obj["metadata"]["annotations"].update({"berth.dev/gpu-ids": dev, "berth.dev/gpu-milli": m})
        if name == "w":
            obj["metadata"]["annotations"]["berth.dev/gpu-ids"] = "0"
        fresh.apply_pod("ADDED", obj)
    fresh.apply_node("ADDED", node("a", gpus=2, replicas=4))
    assert milli(fresh, "a") == [0, 750]
    assert fresh.table.gpu_used[fresh.table.slot_of["a"]] == 0b11
    fresh.apply_pod("DELETED", shared_pod("f2"))
    fresh.apply_pod("DELETED", shared_pod("f1"))
    assert milli(fresh, "a") == [0, 0] and fresh.table.gpu_used[fresh.table.slot_of["a"]] == 0b01


def test_a_fraction_placed_by_someone_else_is_given_a_device_with_room() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", node("a", gpus=2, replicas=10))
    bind(state, shared_pod("x", gpu=8), "a")  # 800 on GPU 0
    other = shared_pod("y", gpu=5)
    other["spec"]["nodeName"] = "a"
    other["metadata"]["annotations"] = {"berth.dev/gpu-ids": "0", "berth.dev/gpu-milli": "500"}  # stale: no room
    state.apply_pod("ADDED", other)
    assert milli(state, "a") == [800, 500]


def test_bind_refuses_a_full_gpu_and_reasons_name_the_fraction() -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", node("a", gpus=1, replicas=4))
    bind(state, shared_pod("f1", gpu=3), "a")
    try:
        bind(state, shared_pod("f2", gpu=2), "a")
    except BindError as exc:
        assert "no GPU on this node has 0.5 free (shared replicas)" in exc.reason
    else:
        raise AssertionError("a second half GPU was booked on a GPU with a quarter left")
    assert milli(state, "a") == [750]


def test_fraction_annotation_is_checked() -> None:
    for bad in ("1.5", "0", "-1", "half"):
        try:
            pod_ask(shared_pod("p", gpu=1, fraction=bad))
        except PodError as exc:
            assert "berth.dev/gpu-fraction" in str(exc)
        else:
            raise AssertionError(f"fraction {bad!r} accepted")
    assert pod_ask(shared_pod("p", gpu=1, fraction="250m")).request.gpu_fraction == 250
    assert pod_ask(shared_pod("p", gpu=1, fraction="1")).request.gpu_fraction == GPU_MILLI


def test_mig_profiles_are_tracked_per_node() -> None:
    state = ClusterState(Config())
    mig = node("mig", gpus=0)
    mig["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] = "2"
    state.apply_node("ADDED", mig)
    slot = state.table.slot_of["mig"]
    for name in ("m1", "m2"):
        obj = shared_pod(name, **{"nvidia.com/mig-1g.10gb": 1})
        obj["spec"]["nodeName"] = "mig"
        state.apply_pod("ADDED", obj)
    assert state.table.other_used[slot] == {"nvidia.com/mig-1g.10gb": 2}
    state.apply_pod("DELETED", shared_pod("m1"))
    assert state.table.other_used[slot] == {"nvidia.com/mig-1g.10gb": 1}


# ---- property: the ledger never holds more than one GPU on a device ----------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["bind", "bind", "bind", "delete", "node"]),
        st.integers(0, 2),  # node
        st.integers(0, 30),  # pod
        st.sampled_from([1, 2, 3, 4, 5, 8, 10, 16]),  # replicas asked (nvidia.com/gpu)
        st.sampled_from([None, "0.1", "0.5", "0.9"]),
    ),
    max_size=60,
)


@given(ops=ops, replicas=st.sampled_from([2, 4, 10]))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_ledger_never_holds_more_than_one_gpu_per_device(ops: list[Any], replicas: int) -> None:
    state = ClusterState(Config())
    for i in range(3):
        state.apply_node("ADDED", node(f"n{i}", gpus=2 + 2 * i, replicas=replicas))
    bound: dict[str, dict[str, Any]] = {}
    for op, n, p, k, fraction in ops:
        name = f"p{p}"
        if op == "bind" and name not in bound:
            obj = shared_pod(name, gpu=k, fraction=fraction)
            try:
                ann = bind(state, obj, f"n{n}")
            except BindError:
                continue
            obj["spec"]["nodeName"] = f"n{n}"
            obj["metadata"]["annotations"].update(ann)
            state.apply_pod("MODIFIED", obj)  # the watch confirms
            bound[name] = obj
        elif op == "delete" and name in bound:
            state.apply_pod("DELETED", bound.pop(name))
        elif op == "node":  # the node object changes (a label, a heartbeat): re-read, pods re-applied
            state.apply_node("MODIFIED", node(f"n{n}", gpus=2 + 2 * n, replicas=replicas))
        check(state)
    for obj in list(bound.values()):
        state.apply_pod("DELETED", obj)
    check(state)
    assert all(
        sum(milli(state, f"n{i}")) == 0 and state.table.gpu_used[state.table.slot_of[f"n{i}"]] == 0 for i in range(3)
    )


def check(state: ClusterState) -> None:
    t = state.table
    for name, slot in t.slot_of.items():
        per = [0] * MAX_GPUS
        whole = 0
        for key in state.ledger.by_node.get(name, ()):
            e = state.ledger.pods[key]
            if e.gpu_milli:
                per[e.gpu_ids.bit_length() - 1] += e.gpu_milli
            else:
                assert not whole & e.gpu_ids, "two whole pods on one GPU"
                whole |= e.gpu_ids
        for g in range(t.alloc_gpu[slot]):
            assert per[g] == t.gpu_milli[slot * MAX_GPUS + g] <= GPU_MILLI
            assert not (per[g] and whole >> g & 1), "a whole pod on a shared GPU"
            assert bool(t.gpu_used[slot] >> g & 1) == bool(per[g] or whole >> g & 1)
