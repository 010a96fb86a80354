"""GPU sharing in the kernels: filter_shared / score_shared / node_verdict_shared agree exactly between the
Cython module and the twin on random heterogeneous clusters with shared nodes and held fractions, give the
whole-GPU kernels' answers wherever no fraction is involved, and follow the rules (best fit among shared
GPUs, never a GPU a whole pod holds, replicas to milli)."""

from __future__ import annotations

import importlib
import os
from array import array
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.cluster.ledger import PodEntry
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.kernels import _python, _python_shared
from scheduler.model import constants as C
from scheduler.model.podspec import PodAsk, PodRequest
from scheduler.policy.demand import demand_of
from scheduler.policy.placement import score_params

MODELS = ("NVIDIA-A100-SXM4-80GB", "Tesla-T4")
NO_EXTENSIONS = bool(os.environ.get("BERTH_NO_EXTENSIONS"))

# Both twin modules as one, as the native module is one: the whole-GPU twins and the sharing ones.
TWIN = SimpleNamespace(**{**vars(_python), **vars(_python_shared)})


def native_module() -> ModuleType:
    try:
        return importlib.import_module("scheduler.kernels._native")
    except ImportError as exc:
        if NO_EXTENSIONS:
            pytest.skip("only the twins are tested (BERTH_NO_EXTENSIONS)")
        pytest.fail(f"scheduler.kernels._native cannot be imported ({exc}); run `make install`")


@pytest.fixture(params=["python", "native"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return TWIN if request.param == "python" else native_module()


def node(
    name: str,
    gpus: int = 8,
    replicas: int = 1,
    renamed: bool = False,
    model: str = MODELS[0],
    cpu: str = "64",
    mem: str = "512Gi",
    pool: str = "",
    cordoned: bool = False,
) -> dict[str, Any]:
    """A Node as the NVIDIA device plugin + GFD advertise it: whole GPUs, or `replicas` per GPU."""
    alloc = {"cpu": cpu, "memory": mem, "pods": "110"}
    labels = {"nvidia.com/gpu.product": model, "berth.dev/pool": pool}
    if gpus:
        labels["nvidia.com/gpu.count"] = str(gpus)
        if replicas > 1 or renamed:
            labels["nvidia.com/gpu.replicas"] = str(replicas)
            labels["nvidia.com/gpu.sharing-strategy"] = "time-slicing"
            labels["nvidia.com/gpu.product"] = model + ("" if renamed else "-SHARED")
        alloc["nvidia.com/gpu.shared" if renamed else "nvidia.com/gpu"] = str(gpus * replicas)
    return {
        "metadata": {"name": name, "labels": labels, "annotations": {}},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {"allocatable": alloc},
    }


def hold(state: ClusterState, key: str, on: str, gpu: int = 0, shared: int = 0, fraction: int = 0) -> PodEntry:
    r = PodRequest(cpu=1000, memory=1 << 30, gpu=gpu, gpu_shared=shared, gpu_fraction=fraction)
    entry = PodEntry(key, f"uid-{key}", on, r, 0, None, False, 0, True)
    state.ledger.hold(entry)
    return entry


def run(
    impl: ModuleType, state: ClusterState, cpu: int, mem: int, gpu: int, shared: int, fraction: int, topo: int = 0
) -> tuple[list[int], list[int]]:
    t = state.table
    slots = array("i", [t.slot_of[n] for n in t.names if n] + [-1])
    pool_ok = b"\x01" * (len(t.pools) + 1)
    out = bytearray(len(slots))
    impl.filter_shared(t, slots, cpu, mem, gpu, shared, fraction, topo, pool_ok, b"", out)
    scores = array("q", bytes(8 * len(slots)))
    state.pools.ensure(len(t.pools) + 1)
    params = score_params(state.config, 0.0, state)  # with the state's demand histogram and largest node
    impl.score_shared(t, slots, cpu, mem, gpu, shared, fraction, topo, pool_ok, state.pools.avail, params, scores)
    raw = array("d", bytes(8 * len(slots)))
    impl.score_shared_raw(t, slots, cpu, mem, gpu, shared, fraction, topo, pool_ok, state.pools.avail, params, raw)
    tiered = array("d", bytes(8 * len(slots)))
    impl.score_shared_raw(
        t, slots, cpu, mem, gpu, shared, fraction, topo, pool_ok, state.pools.avail, params, tiered, bytes(out)
    )
    assert all((x == -1.0) == (v != C.OK) for x, v in zip(tiered, out, strict=True))
    # Visiting the slots in any order (kernels.slot_order gives table order) changes nothing.
    backwards = array("i", reversed(range(len(slots))))
    again = bytearray(len(slots))
    impl.filter_shared(t, slots, cpu, mem, gpu, shared, fraction, topo, pool_ok, b"", again, backwards)
    assert again == out
    visited = array("d", bytes(8 * len(slots)))
    avail = state.pools.avail
    impl.score_shared_raw(
        t, slots, cpu, mem, gpu, shared, fraction, topo, pool_ok, avail, params, visited, bytes(out), backwards
    )
    assert visited == tiered
    return list(out), list(scores) + list(raw) + list(tiered)


# ---- per-node translation of an ask ------------------------------------------------------------------


def test_share_ask_maps_replicas_to_milli() -> None:
    state = ClusterState(Config())
    for n in (node("whole"), node("ts4", replicas=4), node("ren10", replicas=10, renamed=True), node("milli", 2, 1000)):
        state.apply_node("ADDED", n)
    t = state.table
    s = t.slot_of
    ask = _python_shared.share_ask
    assert ask(t, s["whole"], 2, 0, 0) == (2, 0)
    assert ask(t, s["whole"], 1, 0, 500) == (1, 0)  # not shared: the plugin hands out a whole GPU
    assert ask(t, s["ts4"], 1, 0, 0) == (0, 250)
    assert ask(t, s["ts4"], 1, 0, 600) == (0, 600)  # the stated fraction when larger than k/R
    assert ask(t, s["ts4"], 3, 0, 0) == (0, 750)
    assert ask(t, s["ts4"], 4, 0, 0) == (1, 0)  # a whole GPU's replicas: one exclusive GPU
    assert ask(t, s["ts4"], 8, 0, 0) == (2, 0)
    assert ask(t, s["ts4"], 5, 0, 0) == (2, 0)  # above one GPU: rounded up to whole GPUs
    assert ask(t, s["ren10"], 0, 3, 0) == (0, 300)
    assert ask(t, s["ren10"], 1, 0, 0) == (-1, 0)  # nvidia.com/gpu asked, node offers gpu.shared only
    assert ask(t, s["whole"], 0, 1, 0) == (-1, 0)
    assert ask(t, s["milli"], 250, 0, 0) == (0, 250)
    assert ask(t, s["milli"], 1000, 0, 0) == (1, 0)
    assert ask(t, s["milli"], 0, 0, 0) == (0, 0)
    assert t.alloc_gpu[s["milli"]] == 2 and t.replicas[s["milli"]] == 1000
    assert t.facts[s["ts4"]] is not None and t.facts[s["ts4"]].gpu_model == MODELS[0]  # -SHARED stripped
    assert t.shared_slots == {s["ts4"], s["ren10"], s["milli"]}


def test_fraction_fills_the_fullest_shared_gpu_first(impl: ModuleType) -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", node("a", gpus=4, replicas=10))
    hold(state, "ns/p1", "a", gpu=3)  # 300 milli
    hold(state, "ns/p2", "a", gpu=6)  # 600 milli: fits beside the 300 on GPU 0, so no idle GPU is opened
    t, s = state.table, state.table.slot_of["a"]
    assert t.device_milli(s) == [900, 0, 0, 0]
    hold(state, "ns/p3", "a", gpu=2)  # 200: does not fit GPU 0 (900), opens GPU 1
    assert t.device_milli(s) == [900, 200, 0, 0]
    assert impl.node_verdict_shared(t, s, 0, 0, 1, 0, 0, 0, b"\x01\x01", b"") == C.OK  # 100 fits GPU 0 exactly
    assert _python_shared.best_share(t, s, 100) == (0, 900)
    assert _python_shared.best_share(t, s, 300) == (1, 200)
    assert _python_shared.best_share(t, s, 900) == (2, 0)  # no shared GPU has room: the lowest idle one


def test_whole_gpu_pod_never_takes_a_shared_gpu(impl: ModuleType) -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", node("a", gpus=2, replicas=4))
    hold(state, "ns/f", "a", gpu=1)  # 250 milli on GPU 0
    t, s = state.table, state.table.slot_of["a"]
    pool_ok = b"\x01\x01"
    assert impl.node_verdict_shared(t, s, 0, 0, 4, 0, 0, 0, pool_ok, b"") == C.OK  # one whole GPU: GPU 1
    assert impl.node_verdict_shared(t, s, 0, 0, 8, 0, 0, 0, pool_ok, b"") == C.GPU  # two whole: GPU 0 is shared
    whole = hold(state, "ns/w", "a", gpu=4)
    assert whole.gpu_ids == 0b10 and whole.gpu_milli == 0
    assert impl.node_verdict_shared(t, s, 0, 0, 3, 0, 0, 0, pool_ok, b"") == C.OK  # 750 more fits GPU 0
    assert impl.node_verdict_shared(t, s, 0, 0, 0, 0, 0, 0, pool_ok, b"") == C.OK  # CPU-only
    hold(state, "ns/f2", "a", gpu=3)
    assert t.device_milli(s) == [1000, 0]
    assert impl.node_verdict_shared(t, s, 0, 0, 1, 0, 0, 0, pool_ok, b"") == C.SHARE_FULL


def test_resource_and_order_of_checks(impl: ModuleType) -> None:
    state = ClusterState(Config())
    state.apply_node("ADDED", node("ren", gpus=2, replicas=4, renamed=True, cpu="2"))
    state.apply_node("ADDED", node("off", gpus=2, replicas=4, cordoned=True))
    t = state.table
    ren, off = t.slot_of["ren"], t.slot_of["off"]
    pool_ok = b"\x01\x01"
    assert impl.node_verdict_shared(t, ren, 0, 0, 1, 0, 0, 0, pool_ok, b"") == C.SHARE_RESOURCE
    assert impl.node_verdict_shared(t, ren, 3000, 0, 0, 1, 0, 0, pool_ok, b"") == C.CPU
    assert impl.node_verdict_shared(t, ren, 0, 0, 0, 1, 0, 0, pool_ok, b"\x00\x00") == C.MODEL
    assert impl.node_verdict_shared(t, ren, 0, 0, 0, 1, 0, 0, pool_ok, b"\x01\x00") == C.OK
    assert impl.node_verdict_shared(t, off, 0, 0, 1, 0, 0, 0, pool_ok, b"") == C.UNSCHEDULABLE
    assert impl.node_verdict_shared(t, 10_000, 0, 0, 1, 0, 0, 0, pool_ok, b"") == C.UNKNOWN


def test_score_prefers_filling_a_shared_gpu_and_keeps_empty_nodes(impl: ModuleType) -> None:
    state = ClusterState(Config())
    for n in ("empty", "shared", "busy"):
        state.apply_node("ADDED", node(n, gpus=2, replicas=10))
    hold(state, "ns/a", "shared", gpu=5)  # 500 on GPU 0
    hold(state, "ns/b", "busy", gpu=10)  # GPU 0 whole
    verdicts, scores = run(impl, state, 0, 0, 5, 0, 0)
    n = len(verdicts)  # run returns the rounded scores, then the raw ones, then the raw ones of passing nodes
    by = dict(zip([n for n in state.table.names if n], scores[n : 2 * n], strict=False))
    assert verdicts[:3] == [C.OK, C.OK, C.OK]
    assert by["shared"] > by["busy"] > by["empty"]
    parts: dict[str, float] = {}
    t = state.table
    _python_shared.shared_score_parts(
        t, t.slot_of["shared"], 0, 0, 5, 0, 0, b"\x01\x01", state.pools.avail, score_params(state.config, 0.0), parts
    )
    assert parts["share_fit"] == 10.0 and parts["gpu_packing"] == 5.0 and parts["gpu_milli"] == 500.0


# ---- the twins agree --------------------------------------------------------------------------------


@st.composite
def shared_clusters(draw: st.DrawFn) -> ClusterState:
    state = ClusterState(Config())
    n = draw(st.integers(1, 7))
    for i in range(n):
        gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))
        replicas = draw(st.sampled_from([1, 1, 2, 4, 7, 10, 1000]))
        renamed = draw(st.booleans()) and gpus > 0
        model = draw(st.sampled_from(MODELS))
        cordoned = draw(st.integers(0, 9)) == 0
        state.apply_node(
            "ADDED",
            node(f"n{i}", gpus, replicas, renamed, model, cpu=draw(st.sampled_from(["4", "64"])), cordoned=cordoned),
        )
    for k in range(draw(st.integers(0, 25))):
        name = f"n{draw(st.integers(0, n - 1))}"
        slot = state.table.slot_of[name]
        replicas = max(1, state.table.replicas[slot])
        asked = draw(st.integers(1, 2 * replicas))
        renamed = state.table.share_res[slot] == C.SHARE_GPU_SHARED
        fraction = draw(st.sampled_from([0, 0, 100, 500, 999]))
        hold(state, f"ns/p{k}", name, gpu=0 if renamed else asked, shared=asked if renamed else 0, fraction=fraction)
    # Recent asks in the demand histogram (whole, shared and fractional), so the fragmentation part is live.
    for k in range(draw(st.integers(0, 6))):
        gpu, shared = draw(st.sampled_from([(1, 0), (2, 0), (8, 0), (0, 3), (500, 0)]))
        r = PodRequest(cpu=draw(st.sampled_from([1000, 32_000])), memory=1 << 30, gpu=gpu, gpu_shared=shared)
        ask = PodAsk("ns", f"d{k}", f"uid-d{k}", r, 0, draw(st.sampled_from([(), (MODELS[1],)])), 0, "")
        demand_of(state).record(ask, state.quotas.replicas)
    return state


asks = st.tuples(
    st.sampled_from([0, 1000, 64_000, 1 << 40]),  # cpu
    st.sampled_from([0, 1 << 30]),  # memory
    st.sampled_from([0, 0, 1, 2, 3, 4, 8, 500, 1000, 8000]),  # nvidia.com/gpu
    st.sampled_from([0, 0, 1, 3, 10, 700]),  # nvidia.com/gpu.shared
    st.sampled_from([0, 0, 1, 250, 500, 1000]),  # berth.dev/gpu-fraction (milli)
    st.sampled_from([C.TOPOLOGY_NONE, C.TOPOLOGY_REQUIRED]),
)


@given(state=shared_clusters(), ask=asks)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_native_matches_twin_with_sharing(state: ClusterState, ask: tuple[int, int, int, int, int, int]) -> None:
    native = native_module()
    cpu, mem, gpu, shared, fraction, topo = ask
    assert run(native, state, cpu, mem, gpu, shared, fraction, topo) == run(
        TWIN, state, cpu, mem, gpu, shared, fraction, topo
    )
    t = state.table
    pool_ok = b"\x01" * (len(t.pools) + 1)
    for s in [*t.slot_of.values(), t.size + 3]:
        assert native.node_verdict_shared(
            t, s, cpu, mem, gpu, shared, fraction, topo, pool_ok, b""
        ) == _python_shared.node_verdict_shared(t, s, cpu, mem, gpu, shared, fraction, topo, pool_ok, b"")


@given(state=shared_clusters(), ask=asks)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_shared_path_is_the_whole_path_without_fractions(
    state: ClusterState, ask: tuple[int, int, int, int, int, int]
) -> None:
    """On nodes that share nothing, filter_shared and score_shared answer as filter_nodes and score_nodes."""
    cpu, mem, gpu, _, _, topo = ask
    t = state.table
    slots = array("i", [s for s in t.slot_of.values() if s not in t.shared_slots])
    pool_ok = b"\x01" * (len(t.pools) + 1)
    state.pools.ensure(len(t.pools) + 1)
    params = score_params(state.config, 0.0, state)
    for impl in (TWIN, native_module()):
        a, b = bytearray(len(slots)), bytearray(len(slots))
        impl.filter_shared(t, slots, cpu, mem, gpu, 0, 0, topo, pool_ok, b"", a)
        impl.filter_nodes(t, slots, cpu, mem, gpu, topo, pool_ok, b"", b)
        assert a == b
        x, y = array("q", bytes(8 * len(slots))), array("q", bytes(8 * len(slots)))
        impl.score_shared(t, slots, cpu, mem, gpu, 0, 0, topo, pool_ok, state.pools.avail, params, x)
        impl.score_nodes(t, slots, cpu, mem, gpu, topo, pool_ok, state.pools.avail, params, y)
        assert x == y
        u, w = array("d", bytes(8 * len(slots))), array("d", bytes(8 * len(slots)))
        impl.score_shared_raw(t, slots, cpu, mem, gpu, 0, 0, topo, pool_ok, state.pools.avail, params, u)
        impl.score_raw(t, slots, cpu, mem, gpu, topo, pool_ok, state.pools.avail, params, w)
        assert u == w
