"""The filter and score kernels: the Cython module agrees exactly with its pure-Python twin on random
clusters, and both implement the placement rules (each verdict, packing, topology, load, pools)."""

from __future__ import annotations

import importlib
import itertools
import os
import random
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import scheduler.kernels as kernels
from scheduler.cluster.nodetable import NodeTable
from scheduler.config import Config
from scheduler.kernels import _python
from scheduler.model import constants as C
from scheduler.model.constants import N_PARAMS, W_LOAD, W_PACK, W_POOL, W_RES, W_TOPO
from scheduler.policy.placement import score_params

_native: ModuleType | None
try:
    _native = importlib.import_module("scheduler.kernels._native")
except ImportError as exc:
    _native = None
    NATIVE_IMPORT_ERROR = str(exc)
else:
    NATIVE_IMPORT_ERROR = ""

NO_EXTENSIONS = bool(os.environ.get("BERTH_NO_EXTENSIONS"))
NOW = 1_760_000_000.0  # a fixed "now" for load freshness, so examples replay exactly
GI = 1 << 30
MODELS = ("NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4")
POOLS = ("", "a100", "h100", "shared")
MOST, P_NOW, MAX_AGE = C.MOST_ALLOCATED, C.NOW, C.LOAD_MAX_AGE  # params indices (NOW is the test's clock)


def native_module() -> ModuleType:
    """The Cython kernels; a missing build fails the test, unless the twins were asked for explicitly."""
    if _native is None:
        if NO_EXTENSIONS:
            pytest.skip(
                "scheduler.kernels._native is not built and BERTH_NO_EXTENSIONS is set: "
                "only the pure-Python twins are tested"
            )
        pytest.fail(
            f"scheduler.kernels._native cannot be imported ({NATIVE_IMPORT_ERROR}); "
            "run `make install` to compile the Cython kernels"
        )
    return _native


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return native_module()


@pytest.fixture(params=["python", "native"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return _python if request.param == "python" else native_module()


def test_native_selected_unless_disabled() -> None:
    if NO_EXTENSIONS:
        assert kernels.NATIVE is False
        assert kernels.filter_nodes is _python.filter_nodes
    else:
        assert kernels.NATIVE is True, f"Cython kernels not in use: {NATIVE_IMPORT_ERROR or 'import succeeded'}"
        assert kernels.filter_nodes is native_module().filter_nodes
        assert kernels.score_nodes is native_module().score_nodes
        assert kernels.node_verdict is native_module().node_verdict


def test_bind_checks_through_the_selected_kernel() -> None:
    """Bind re-checks the node with the selector's verdict: the native one when it is built."""
    from scheduler.policy import binder

    assert binder.node_verdict is kernels.node_verdict
    assert kernels.node_verdict is (_python.node_verdict if NO_EXTENSIONS else native_module().node_verdict)


# --------------------------------------------------------------------------------------------------
# Node objects
# --------------------------------------------------------------------------------------------------


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_obj(
    name: str,
    cpu: str = "32",
    mem: str = "128Gi",
    pods: str | None = "110",
    gpus: int = 0,
    model: str | None = MODELS[0],
    pool: str | None = "a100",
    islands: list[list[int]] | None = None,
    topology: str | None = None,
    unschedulable: bool = False,
    load: str | None = None,
    load_time: str | None = None,
    maintenance: str | None = None,
) -> dict[str, Any]:
    """A Node as the informer sees it; `topology` overrides the annotation built from `islands`."""
    alloc: dict[str, str] = {"cpu": cpu, "memory": mem}
    if pods is not None:
        alloc["pods"] = pods
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
        if model:
            labels["nvidia.com/gpu.product"] = model
    if pool is not None:
        labels["berth.dev/pool"] = pool
    if islands is not None:
        annotations["berth.dev/gpu-topology"] = orjson.dumps({"islands": islands}).decode()
    if topology is not None:
        annotations["berth.dev/gpu-topology"] = topology
    if load is not None:
        annotations["berth.dev/load"] = load
    if load_time is not None:
        annotations["berth.dev/load-time"] = load_time
    if maintenance is not None:
        annotations["berth.dev/maintenance"] = maintenance
    return {
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {"allocatable": alloc},
    }


def set_used(t: NodeTable, name: str, cpu: int = 0, mem: int = 0, pods: int = 0, gpus: tuple[int, ...] = ()) -> None:
    """What the ledger would have written for pods holding these resources."""
    s = t.slot_of[name]
    mask = 0
    for g in gpus:
        mask |= 1 << g
    t.used_cpu[s], t.used_mem[s], t.used_pods[s] = cpu, mem, pods
    t.gpu_used[s] = mask & t.gpu_mask[s]
    t.used_gpu[s] = t.gpu_used[s].bit_count()


# --------------------------------------------------------------------------------------------------
# Property: native == twin on random clusters
# --------------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A drawn cluster, kept as plain data so a failing example prints readably."""

    nodes: list[dict[str, Any]]
    removed: list[str]
    late: list[dict[str, Any]]  # added after the removals: they reuse freed slots
    used: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # cpu, mem, pods, gpu mask

    def build(self) -> NodeTable:
        t = NodeTable(capacity=8)  # small, so growth is exercised too
        for node in self.nodes:
            t.upsert(node)
        for name in self.removed:
            t.remove(name)
        for node in self.late:
            t.upsert(node)
        for name, (cpu, mem, pods, mask) in self.used.items():
            s = t.slot_of[name]
            t.used_cpu[s], t.used_mem[s], t.used_pods[s] = cpu, mem, pods
            t.gpu_used[s] = mask & t.gpu_mask[s]
            t.used_gpu[s] = t.gpu_used[s].bit_count()
        return t


@st.composite
def island_lists(draw: st.DrawFn, gpus: int) -> list[list[int]]:
    """1-4 disjoint islands over a permutation of the GPUs; GPUs left out become singletons."""
    order = draw(st.permutations(range(gpus)))
    count = draw(st.integers(1, min(4, gpus)))
    cuts = (
        sorted(draw(st.lists(st.integers(1, gpus - 1), min_size=count - 1, max_size=count - 1, unique=True)))
        if count > 1
        else []
    )
    bounds = [0, *cuts, gpus]
    groups = [sorted(order[a:b]) for a, b in itertools.pairwise(bounds)]
    if draw(st.booleans()) and len(groups) > 1:
        groups = groups[:-1]  # leave some GPUs unlisted
    return groups


def memories() -> st.SearchStrategy[int]:
    # Mostly realistic nodes; sometimes huge (up to 2**58 bytes: 10x still fits in int64), where the
    # conversion of large integers to double is where a twin could round differently from C.
    return st.one_of(
        st.sampled_from([64, 256, 1024, 2048]).map(lambda g: g * GI),
        st.integers(0, 4096).map(lambda g: g * GI),
        st.integers(0, 1 << 42),
        st.integers(1 << 50, 1 << 58),
    )


@st.composite
def node_dicts(draw: st.DrawFn, name: str) -> dict[str, Any]:
    gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))  # heterogeneous, as the trace benchmark's cluster
    topology = None
    islands = None
    if gpus:
        kind = draw(st.sampled_from(["islands", "islands", "none", "garbage"]))
        if kind == "islands":
            islands = draw(island_lists(gpus))
        elif kind == "garbage":
            topology = draw(st.sampled_from(['{"islands": [[0, 99]]}', "not json", '{"islands": []}']))
    load = draw(st.one_of(st.none(), st.floats(-0.5, 1.5).map(lambda x: f"{x:.3f}"), st.just("nan"), st.just("high")))
    load_time = draw(st.one_of(st.none(), st.integers(-900, 900).map(lambda d: iso(NOW + d)), st.just("yesterday")))
    return node_obj(
        name,
        cpu=f"{draw(st.one_of(st.sampled_from([8_000, 32_000, 96_000, 192_000]), st.integers(0, 256_000)))}m",
        mem=str(draw(memories())),
        pods=draw(st.one_of(st.none(), st.integers(0, 4).map(str), st.integers(0, 250).map(str))),
        gpus=gpus,
        model=draw(st.one_of(st.none(), st.sampled_from(MODELS))),
        pool=draw(st.one_of(st.none(), st.sampled_from(POOLS))),
        islands=islands,
        topology=topology,
        unschedulable=draw(st.integers(0, 7)) == 0,
        load=load,
        load_time=load_time,
        maintenance=draw(
            st.one_of(st.none(), st.integers(-900, 900).map(lambda d: iso(NOW + d)), st.just("now"), st.just(""))
        ),
    )


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    count = draw(st.integers(1, 24))
    names = [f"node-{i}" for i in range(count)]
    nodes = [draw(node_dicts(n)) for n in names]
    # Updates of existing nodes (a relabel, a new allocatable) go through upsert too.
    nodes += [draw(node_dicts(n)) for n in draw(st.lists(st.sampled_from(names), max_size=3))]
    removed = draw(st.lists(st.sampled_from(names), max_size=count // 2 + 1, unique=True))
    late = [draw(node_dicts(f"late-{i}")) for i in range(draw(st.integers(0, 3)))]
    cluster = Cluster(nodes, removed, late)
    table = cluster.build()
    for name in table.slot_of:
        s = table.slot_of[name]
        ac, am, ap = table.alloc_cpu[s], table.alloc_mem[s], table.alloc_pods[s]
        cluster.used[name] = (
            draw(st.one_of(st.just(0), st.integers(0, ac + ac // 4 + 1))),  # over-committed: a kubelet restart
            draw(st.one_of(st.just(0), st.integers(0, am + 1))),
            draw(st.one_of(st.just(0), st.integers(0, ap + 1))),
            draw(st.integers(0, (1 << 64) - 1)) if draw(st.booleans()) else 0,
        )
    return cluster


@dataclass
class Pod:
    cpu: int
    mem: int
    gpu: int
    topo: int


pods = st.builds(
    Pod,
    cpu=st.one_of(st.integers(0, 16_000), st.integers(0, 256_000)),
    mem=st.one_of(st.integers(0, 1024).map(lambda g: g * GI), st.integers(0, 1 << 50)),
    gpu=st.integers(0, 8),
    topo=st.sampled_from([0, 1, 2]),
)
weights = st.one_of(st.just(0.0), st.floats(0.0, 100.0, allow_nan=False, allow_infinity=False))


@st.composite
def params_arrays(draw: st.DrawFn) -> array:
    p = array("d", [0.0] * N_PARAMS)
    for i in C.WEIGHT_INDEX:
        p[i] = draw(weights)
    p[MOST] = draw(st.sampled_from([0.0, 1.0]))
    p[P_NOW] = NOW
    p[MAX_AGE] = draw(st.sampled_from([0.0, 60.0, 300.0, 1e9]))
    # The demand histogram: GPUs per bucket, weights (any, not only summing to 1), typical cpu and
    # memory per GPU (0: the node's own ratio), and per-model pressure.
    for b in range(C.DEMAND_BUCKETS):
        base = C.DEMAND_BASE + b * C.DEMAND_FIELDS
        k = draw(st.sampled_from([0, 1, 2, 3, 4, 8]))
        p[base + C.D_GPUS] = float(k)
        p[base + C.D_INV_GPUS] = 1.0 / k if k else 0.0
        p[base + C.D_WEIGHT] = draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0)))
        p[base + C.D_CPU] = draw(st.one_of(st.just(0.0), st.floats(1.0, 64_000.0), st.integers(1, 1 << 20).map(float)))
        p[base + C.D_MEM] = draw(st.one_of(st.just(0.0), st.floats(1.0, 1e12), st.just(float(8 * GI))))
    for m in range(C.SCARCITY_MODELS):
        p[C.SCARCITY_BASE + m] = draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0)))
    # Best fit's scale (0: the node's own amounts) and when the pod ends (0: long-running).
    p[C.MAX_NODE_GPUS] = draw(st.sampled_from([0.0, 1.0, 8.0, 64.0]))
    p[C.MAX_NODE_CPU] = draw(st.sampled_from([0.0, 1.0, 128_000.0, 1e9]))
    p[C.MAX_NODE_MEM] = draw(st.sampled_from([0.0, 1.0, float(1024 * GI), 1e18]))
    p[C.POD_END] = draw(st.one_of(st.just(0.0), st.integers(-900, 900).map(lambda d: NOW + d)))
    # The scarce-model tier: on for a pod of any model, at any threshold (0 protects every model in use).
    p[C.POD_ANY_MODEL] = draw(st.sampled_from([0.0, 1.0]))
    p[C.PROTECT_AT] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    return p


@given(cluster=clusters(), pod=pods, data=st.data(), params=params_arrays())
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_native_matches_twin(
    native: ModuleType, cluster: Cluster, pod: Pod, data: st.DataObject, params: array
) -> None:
    t = cluster.build()
    npools, nmodels = len(t.pools), len(t.models)
    # Every slot once (live and deleted), plus unknown (-1) and repeated ones, in any order.
    extra = data.draw(st.lists(st.integers(-1, t.size - 1), max_size=8), label="extra slots")
    slots = array("i", data.draw(st.permutations([*range(t.size), *extra]), label="slots"))
    pool_ok = bytes(
        data.draw(st.lists(st.sampled_from([0, 1, 1, 2]), min_size=npools + 1, max_size=npools + 1), label="pool_ok")
    )
    model_ok = data.draw(
        st.one_of(
            st.just(b""),
            st.just(b""),
            st.binary(min_size=nmodels + 1, max_size=nmodels + 1).map(lambda b: bytes(x % 4 != 0 for x in b)),
        ),
        label="model_ok",
    )
    pool_avail = array(
        "d", data.draw(st.lists(st.floats(0.0, 1.0), min_size=npools + 1, max_size=npools + 1), label="pool_avail")
    )
    args = (slots, pod.cpu, pod.mem, pod.gpu, pod.topo)
    # The demand histogram's free GPUs per model (fewer entries than models: the rest are left out).
    free_py, free_c = array("q", bytes(8 * nmodels)), array("q", bytes(8 * nmodels))
    _python.free_by_model(t, free_py)
    native.free_by_model(t, free_c)
    assert list(free_py) == list(free_c)
    want = [0] * nmodels
    for s in range(t.size):
        if t.flags[s] & C.FLAG_PRESENT and t.model[s] >= 0:
            want[t.model[s]] += t.free_gpus(s).bit_count()
    assert list(free_py) == want
    short_py, short_c = array("q", bytes(8)), array("q", bytes(8))
    _python.free_by_model(t, short_py)
    native.free_by_model(t, short_c)
    assert list(short_py) == list(short_c) == [*want, 0][:1]

    out_py, out_c = bytearray(len(slots)), bytearray(len(slots))
    passed_py = _python.filter_nodes(t, *args, pool_ok, model_ok, out_py)
    passed_c = native.filter_nodes(t, *args, pool_ok, model_ok, out_c)
    for v in set(out_py):
        event(f"verdict {v}")
    assert list(out_c) == list(out_py)
    assert passed_c == passed_py
    # The single-node verdict bind uses is the filter's, node by node, in both (slots past the table too).
    for s in [*slots, t.capacity, t.capacity + 7]:
        one_py = _python.node_verdict(t, s, pod.cpu, pod.mem, pod.gpu, pod.topo, pool_ok, model_ok)
        assert native.node_verdict(t, s, pod.cpu, pod.mem, pod.gpu, pod.topo, pool_ok, model_ok) == one_py
    assert [_python.node_verdict(t, s, pod.cpu, pod.mem, pod.gpu, pod.topo, pool_ok, model_ok) for s in slots] == list(
        out_py
    )

    score_py, score_c = array("q", bytes(8 * len(slots))), array("q", bytes(8 * len(slots)))
    _python.score_nodes(t, *args, pool_ok, pool_avail, params, score_py)
    native.score_nodes(t, *args, pool_ok, pool_avail, params, score_c)
    assert list(score_c) == list(score_py)
    raw_py, raw_c = array("d", bytes(8 * len(slots))), array("d", bytes(8 * len(slots)))
    _python.score_raw(t, *args, pool_ok, pool_avail, params, raw_py)
    native.score_raw(t, *args, pool_ok, pool_avail, params, raw_c)
    assert list(raw_c) == list(raw_py)  # exactly: the same operations in the same order
    _python.score_raw(t, *args, pool_ok, pool_avail, params, raw_py, bytes(out_py))
    native.score_raw(t, *args, pool_ok, pool_avail, params, raw_c, bytes(out_c))
    assert list(raw_c) == list(raw_py)
    assert all((x == -1.0) == (v != kernels.OK) for x, v in zip(raw_py, out_py, strict=True))
    _visited_in_table_order(native, t, slots, args, pool_ok, model_ok, pool_avail, params, out_py, raw_py)
    norm_py, norm_c = array("q", bytes(8 * len(slots))), array("q", bytes(8 * len(slots)))
    _python.normalize_scores(raw_py, norm_py)
    native.normalize_scores(raw_c, norm_c)
    assert list(norm_c) == list(norm_py)
    margin = data.draw(st.sampled_from([0.0, 0.5, 2.0]), label="margin")
    tier_py, tier_c = bytearray(out_py), bytearray(out_c)
    assert _python.best_tier(raw_py, tier_py, margin) == native.best_tier(raw_c, tier_c, margin)
    assert tier_py == tier_c
    assert list(_python.pick_raw(raw_py, bytes(tier_py), kernels.OK)) == list(
        native.pick_raw(raw_c, bytes(tier_c), kernels.OK)
    )

    # Failed nodes are grouped by the sentence they get the same way by both.
    ids_py, ids_c = array("i", bytes(4 * len(slots))), array("i", bytes(4 * len(slots)))
    tally_py, tally_c = array("q", bytes(8 * 256)), array("q", bytes(8 * 256))
    groups_py = _python.reason_ids(t, slots, bytes(out_py), pod.cpu, pod.mem, pod.gpu, ids_py, None, tally_py)
    groups_c = native.reason_ids(t, slots, bytes(out_c), pod.cpu, pod.mem, pod.gpu, ids_c, None, tally_c)
    assert groups_c == groups_py
    assert list(ids_c) == list(ids_py)
    assert list(tally_c) == list(tally_py) == [out_py.count(code) for code in range(256)]
    # ... and so are the nodes the best tier failed (grouped by their free GPUs, which their sentence names).
    groups_py = _python.reason_ids(t, slots, bytes(tier_py), pod.cpu, pod.mem, pod.gpu, ids_py)
    groups_c = native.reason_ids(t, slots, bytes(tier_c), pod.cpu, pod.mem, pod.gpu, ids_c)
    assert groups_c == groups_py
    assert list(ids_c) == list(ids_py)


def _visited_in_table_order(
    native: ModuleType,
    t: NodeTable,
    slots: array,
    args: tuple[array, int, int, int, int],
    pool_ok: bytes,
    model_ok: bytes,
    pool_avail: array,
    params: array,
    verdicts: bytearray,
    raw: array,
) -> None:
    """slot_order sorts the positions by slot (stably, unknown slots first) in both; filter and score visiting
    the slots in that order give exactly what they give in the slots' own order."""
    order = native.slot_order(slots, t.size)
    assert list(order) == list(_python.slot_order(slots, t.size))
    assert sorted(order) == list(range(len(slots)))
    keys = [slots[i] if 0 <= slots[i] < t.size else -1 for i in order]
    assert keys == sorted(keys)
    assert all(order[k] < order[k + 1] for k in range(len(order) - 1) if keys[k] == keys[k + 1])
    for impl in (native, _python):
        out = bytearray(len(slots))
        impl.filter_nodes(t, *args, pool_ok, model_ok, out, order)
        assert out == verdicts
        got = array("d", bytes(8 * len(slots)))
        impl.score_raw(t, *args, pool_ok, pool_avail, params, got, bytes(verdicts), order)
        assert list(got) == list(raw)
        ids, ids_visited = array("i", bytes(4 * len(slots))), array("i", bytes(4 * len(slots)))
        groups = impl.reason_ids(t, slots, bytes(verdicts), *args[1:4], ids)
        assert impl.reason_ids(t, slots, bytes(verdicts), *args[1:4], ids_visited, order) == groups
        assert ids_visited == ids
    with pytest.raises(ValueError, match="order"):
        native.filter_nodes(
            t, *args, pool_ok, model_ok, bytearray(len(slots)), order[:-1] if order else array("i", [0])
        )


@st.composite
def repeated_states(draw: st.DrawFn) -> tuple[NodeTable, array]:
    """Many nodes in few shapes and states (what the kernels' per-call memo of the fragmentation part hits),
    and sometimes more distinct states than the memo holds (where its entries are overwritten)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    shapes = [
        (draw(st.sampled_from([1, 2, 4, 8])), draw(st.sampled_from([16_000, 64_000, 96_000, 128_000])), g * 32 * GI)
        for g in draw(st.lists(st.sampled_from([2, 4, 8, 16]), min_size=1, max_size=4))
    ]
    states = draw(st.integers(1, 2000))
    t = NodeTable()
    for i in range(draw(st.sampled_from([40, 700, 2500]))):
        gpus, cpu, mem = rng.choice(shapes)
        s = t.upsert(node_obj(f"n-{i}", cpu=f"{cpu}m", mem=str(mem), gpus=gpus, model=rng.choice(MODELS)))
        state = random.Random(rng.randrange(states))  # nodes drawing the same state number are alike
        t.used_cpu[s] = state.randrange(0, cpu + 1, 4_000)
        t.used_mem[s] = state.randrange(0, mem + 1, 16 * GI)
        t.gpu_used[s] = state.getrandbits(gpus)
        t.used_gpu[s] = t.gpu_used[s].bit_count()
    # In a shuffled order, as kube-scheduler's names come, with some slots twice and some unknown (-1).
    slots = [*range(t.size), *rng.sample(range(t.size), min(t.size, 50)), -1, -1]
    rng.shuffle(slots)
    return t, array("i", slots)


@given(case=repeated_states(), pod=pods, params=params_arrays())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_scores_of_alike_nodes_agree(
    native: ModuleType, case: tuple[NodeTable, array], pod: Pod, params: array
) -> None:
    """The native score kernels keep the fragmentation part of each node state they computed in one call;
    the twin computes every node. Both, and the native kernel scoring each node in a call of its own
    (where nothing is kept), give exactly the same scores."""
    t, slots = case
    n, ok, avail = len(slots), b"\x01" * (len(t.pools) + 1), array("d", [1.0] * (len(t.pools) + 1))
    raw_py, raw_c, alone = (array("d", bytes(8 * n)) for _ in range(3))
    for gpu in (pod.gpu, 0):  # a GPU pod's fragmentation part, and a pod without GPUs' GPU part
        args = (slots, pod.cpu, pod.mem, gpu, pod.topo, ok, avail, params)
        _python.score_raw(t, *args, raw_py)
        native.score_raw(t, *args, raw_c)
        for i in range(n):
            one = array("d", [0.0])
            native.score_raw(t, slots[i : i + 1], *args[1:], one)
            alone[i] = one[0]
        assert list(raw_c) == list(raw_py) == list(alone)
        in_table_order = array("d", bytes(8 * n))  # alike nodes next to each other: the memo hits in runs
        native.score_raw(t, *args, in_table_order, b"", native.slot_order(slots, t.size))
        assert list(in_table_order) == list(raw_c)
        rounded_py, rounded_c = array("q", bytes(8 * n)), array("q", bytes(8 * n))
        _python.score_nodes(t, *args, rounded_py)
        native.score_nodes(t, *args, rounded_c)
        assert list(rounded_c) == list(rounded_py)


def test_huge_memory_scores_agree(native: ModuleType) -> None:
    """Regression: the twin divided Python ints exactly while C rounds each operand to double first,
    so on a node with ~64 PiB the resource part landed on either side of a rounding boundary."""
    t = NodeTable()
    s = t.upsert(node_obj("big", cpu="1", mem=str(2**56 + 9)))
    t.used_mem[s] = (2**56 + 4) // 10
    params = array("d", [0.0] * N_PARAMS)  # resources only, most allocated
    params[W_RES], params[MOST], params[P_NOW], params[MAX_AGE] = 1.0, 1.0, NOW, 300
    out = {}
    for mod in (_python, native):
        o = array("q", [0])
        mod.score_nodes(t, array("i", [s]), 0, 0, 0, 0, b"\x01\x01", array("d", [0.0, 0.0]), params, o)
        out[mod.__name__] = o[0]
    assert len(set(out.values())) == 1, out


def test_reason_groups_past_the_bound_agree(native: ModuleType) -> None:
    """More distinct sentences than MAX_REASONS (a pool each): both number the first MAX_REASONS as they
    come and give every later one the last id, whatever order the keys hash in."""
    t = NodeTable()
    for i in range(C.MAX_REASONS * 3):
        t.upsert(node_obj(f"n{i}", pool=f"pool-{i}"))
    slots = array("i", random.Random(7).sample(range(t.size), t.size) * 2)
    refused = bytes([kernels.POOL]) * len(slots)
    out = {}
    for mod in (_python, native):
        ids, tally = array("i", bytes(4 * len(slots))), array("q", bytes(8 * 256))
        groups = mod.reason_ids(t, slots, refused, 0, 0, 0, ids, None, tally)
        out[mod.__name__] = (groups, list(ids))
        assert len(groups) == C.MAX_REASONS and max(ids) == C.MAX_REASONS - 1
        assert tally[kernels.POOL] == len(slots) and sum(tally) == len(slots)
    assert out[_python.__name__] == out[native.__name__]
    with pytest.raises(ValueError, match="tally"):
        native.reason_ids(t, slots, refused, 0, 0, 0, array("i", bytes(4 * len(slots))), None, array("q", [0]))


def test_kept_views_follow_the_table_as_it_grows(native: ModuleType) -> None:
    """The kernels keep their views of a NodeTable's arrays between calls; growing the table (which must
    let go of them first: an array with a view cannot be resized) and writing to it are both seen."""
    t = NodeTable(capacity=4)
    t.upsert(node_obj("a", cpu="4"))
    assert verdicts(native, t, ["a"], cpu=2000) == [kernels.OK]
    assert t.kernel_views is not None
    for i in range(40):  # past the capacity: the arrays grow
        t.upsert(node_obj(f"b{i}", cpu="1"))
    names = ["a", "b0", "b39"]
    assert verdicts(native, t, names, cpu=2000) == verdicts(_python, t, names, cpu=2000)
    assert verdicts(native, t, names, cpu=2000) == [kernels.OK, kernels.CPU, kernels.CPU]
    t.used_cpu[t.slot_of["a"]] = 3000
    assert verdicts(native, t, ["a"], cpu=2000) == [kernels.CPU]


# --------------------------------------------------------------------------------------------------
# Filter rules, on both implementations
# --------------------------------------------------------------------------------------------------


def table(*nodes: dict[str, Any]) -> NodeTable:
    t = NodeTable()
    for n in nodes:
        t.upsert(n)
    return t


def verdicts(
    mod: ModuleType,
    t: NodeTable,
    names: list[str | None],
    cpu: int = 0,
    mem: int = 0,
    gpu: int = 0,
    topo: int = 0,
    pool_ok: bytes | None = None,
    model_ok: bytes = b"",
) -> list[int]:
    slots = array("i", [t.slot_of.get(n, -1) if n else -1 for n in names])
    pool_ok = pool_ok if pool_ok is not None else b"\x01" * (len(t.pools) + 1)
    out = bytearray(len(slots))
    passed = mod.filter_nodes(t, slots, cpu, mem, gpu, topo, pool_ok, model_ok, out)
    assert passed == out.count(kernels.OK)
    return list(out)


def scores(
    mod: ModuleType,
    t: NodeTable,
    names: list[str],
    cpu: int = 0,
    mem: int = 0,
    gpu: int = 0,
    topo: int = 0,
    pool_ok: bytes | None = None,
    params: array | None = None,
    pool_avail: array | None = None,
) -> list[int]:
    slots = array("i", [t.slot_of.get(n, -1) for n in names])
    pool_ok = pool_ok if pool_ok is not None else b"\x01" * (len(t.pools) + 1)
    pool_avail = pool_avail if pool_avail is not None else array("d", [0.0] * (len(t.pools) + 1))
    params = params if params is not None else default_params()
    out = array("q", bytes(8 * len(slots)))
    mod.score_nodes(t, slots, cpu, mem, gpu, topo, pool_ok, pool_avail, params, out)
    return list(out)


def default_params() -> array:
    return score_params(Config(), NOW)


def only(weight: int, most: bool = False, max_age: float = 300.0) -> array:
    """Params that score a single part, so the score is that part rounded."""
    p = array("d", [0.0] * N_PARAMS)
    p[weight] = 1.0
    p[MOST], p[P_NOW], p[MAX_AGE] = (1.0 if most else 0.0), NOW, max_age
    return p


def test_unknown_nodes(impl: ModuleType) -> None:
    t = table(node_obj("a"), node_obj("gone"))
    t.remove("gone")
    slots = array("i", [-1, 1, 0])  # slot 1 belonged to the removed node
    out = bytearray(3)
    assert impl.filter_nodes(t, slots, 0, 0, 0, 0, b"\x01\x01", b"", out) == 1
    assert list(out) == [kernels.UNKNOWN, kernels.UNKNOWN, kernels.OK]
    score = array("q", bytes(24))
    impl.score_nodes(t, slots, 0, 0, 0, 0, b"\x01\x01", array("d", [1.0, 1.0]), default_params(), score)
    assert score[0] == score[1] == 0 and score[2] > 0


def test_node_verdict(impl: ModuleType) -> None:
    """The one-node verdict bind re-checks with: the filter's rules, and UNKNOWN outside the table."""
    t = table(node_obj("cordoned", unschedulable=True), node_obj("small", cpu="1"), node_obj("gone"))
    t.remove("gone")
    pools = b"\x01" * (len(t.pools) + 1)
    one = [impl.node_verdict(t, s, 2000, 0, 0, 0, pools, b"") for s in (0, 1, 2, -1, t.capacity, 10**6)]
    assert one == [
        kernels.UNSCHEDULABLE,
        kernels.CPU,
        kernels.UNKNOWN,
        kernels.UNKNOWN,
        kernels.UNKNOWN,
        kernels.UNKNOWN,
    ]
    assert impl.node_verdict(t, 1, 1000, 0, 0, 0, pools, b"") == kernels.OK


def test_unschedulable_checked_before_pool(impl: ModuleType) -> None:
    t = table(node_obj("cordoned", unschedulable=True), node_obj("open"))
    assert verdicts(impl, t, ["cordoned", "open"]) == [kernels.UNSCHEDULABLE, kernels.OK]
    assert verdicts(impl, t, ["cordoned", "open"], pool_ok=b"\x00\x00") == [kernels.UNSCHEDULABLE, kernels.POOL]


def test_pool(impl: ModuleType) -> None:
    t = table(node_obj("own", pool="a"), node_obj("cohort", pool="b"), node_obj("other", pool="c"))
    assert verdicts(impl, t, ["own", "cohort", "other"], pool_ok=bytes([1, 2, 0, 0])) == [
        kernels.OK,
        kernels.OK,
        kernels.POOL,
    ]


def test_model(impl: ModuleType) -> None:
    t = table(
        node_obj("a100", gpus=8, model=MODELS[0]),
        node_obj("h100", gpus=8, model=MODELS[1]),
        node_obj("unlabelled", gpus=8, model=None),
        node_obj("cpu"),
    )
    t.intern_model(MODELS[2])  # a model seen after model_ok was built: id beyond model_ok
    l4 = node_obj("l4", gpus=8, model=MODELS[2])
    t.upsert(l4)
    names: list[str | None] = ["a100", "h100", "unlabelled", "l4"]
    only_h100 = bytes([0, 1, 0])  # ids 0 (A100), 1 (H100); the trailing byte; L4 (id 2) left out
    assert verdicts(impl, t, names, gpu=1, model_ok=only_h100[:2]) == [
        kernels.MODEL,
        kernels.OK,
        kernels.MODEL,
        kernels.MODEL,
    ]
    assert verdicts(impl, t, names, gpu=1, model_ok=b"") == [kernels.OK] * 4  # empty: any model
    # CPU pods ignore the GPU model; the CPU node then fails on GPUs, not on the model
    assert verdicts(impl, t, [*names, "cpu"], gpu=0, model_ok=only_h100) == [kernels.OK] * 5
    assert verdicts(impl, t, ["cpu"], gpu=1, model_ok=b"") == [kernels.GPU]
    assert verdicts(impl, t, ["cpu"], gpu=1, model_ok=b"\x01\x01\x01\x00") == [kernels.MODEL]


def test_pods(impl: ModuleType) -> None:
    t = table(node_obj("room", pods="10"), node_obj("full", pods="10"), node_obj("none", pods="0"))
    set_used(t, "room", pods=9)
    set_used(t, "full", pods=10)
    assert verdicts(impl, t, ["room", "full", "none"]) == [kernels.OK, kernels.PODS, kernels.PODS]


def test_cpu_and_memory_boundaries(impl: ModuleType) -> None:
    t = table(node_obj("n", cpu="4", mem="16Gi"))
    set_used(t, "n", cpu=1000, mem=4 * GI)
    assert verdicts(impl, t, ["n"], cpu=3000, mem=12 * GI) == [kernels.OK]  # exactly full
    assert verdicts(impl, t, ["n"], cpu=3001, mem=12 * GI) == [kernels.CPU]
    assert verdicts(impl, t, ["n"], cpu=3000, mem=12 * GI + 1) == [kernels.MEMORY]
    assert verdicts(impl, t, ["n"], cpu=3001, mem=12 * GI + 1) == [kernels.CPU]  # cpu is checked first


def test_gpu_count(impl: ModuleType) -> None:
    t = table(node_obj("g", gpus=8, islands=[[0, 1, 2, 3], [4, 5, 6, 7]]), node_obj("cpu"))
    set_used(t, "g", gpus=(0, 1, 4))
    assert verdicts(impl, t, ["g", "cpu"], gpu=5) == [kernels.OK, kernels.GPU]
    assert verdicts(impl, t, ["g"], gpu=6) == [kernels.GPU]
    assert verdicts(impl, t, ["g", "cpu"], gpu=0) == [kernels.OK, kernels.OK]


def test_topology_required(impl: ModuleType) -> None:
    t = table(
        node_obj("split", gpus=8, islands=[[0, 1, 2, 3], [4, 5, 6, 7]]),
        node_obj("whole", gpus=8, islands=[[0, 1, 2, 3], [4, 5, 6, 7]]),
        node_obj("nvswitch", gpus=8),
    )  # no annotation: one island of all GPUs
    set_used(t, "split", gpus=(0, 1, 4, 5))  # 4 free, 2 per island
    set_used(t, "whole", gpus=(0, 1, 2, 3))  # 4 free, all in island 2
    set_used(t, "nvswitch", gpus=(0, 2, 4, 6))
    names: list[str | None] = ["split", "whole", "nvswitch"]
    assert verdicts(impl, t, names, gpu=4, topo=2) == [kernels.TOPOLOGY, kernels.OK, kernels.OK]
    assert verdicts(impl, t, names, gpu=4, topo=1) == [kernels.OK] * 3  # preferred never rejects
    assert verdicts(impl, t, names, gpu=4, topo=0) == [kernels.OK] * 3
    assert verdicts(impl, t, names, gpu=2, topo=2) == [kernels.OK] * 3
    assert verdicts(impl, t, names, gpu=5, topo=2) == [kernels.GPU] * 3  # too few GPUs comes first


def test_topology_island_too_small(impl: ModuleType) -> None:
    t = table(
        node_obj("pcie", gpus=4, islands=[[0], [1], [2], [3]]), node_obj("bad", gpus=4, topology="not json")
    )  # unreadable: one island, never rejects
    assert verdicts(impl, t, ["pcie", "bad"], gpu=2, topo=2) == [kernels.TOPOLOGY, kernels.OK]
    assert verdicts(impl, t, ["pcie"], gpu=1, topo=2) == [kernels.OK]


# --------------------------------------------------------------------------------------------------
# Score rules, on both implementations
# --------------------------------------------------------------------------------------------------


def test_best_fit_island(impl: ModuleType) -> None:
    t = table(node_obj("n", gpus=8, islands=[[0, 1, 2, 3], [4, 5, 6, 7]]))
    set_used(t, "n", gpus=(0, 1))  # island 1: 2 free, island 2: 4 free
    s = t.slot_of["n"]
    free = t.free_gpus(s)
    assert _python.best_island(t.islands, s, free, 2) == (2, 4)
    assert _python.best_island(t.islands, s, free, 3) == (4, 4)
    assert _python.best_island(t.islands, s, free, 5) == (-1, 0)
    # topology part = 10 * (1 - (best - gpu) / size): exact fill of island 1 scores 10
    assert scores(impl, t, ["n"], gpu=2, params=only(W_TOPO)) == [10]
    assert scores(impl, t, ["n"], gpu=3, params=only(W_TOPO)) == [8]  # 4-free island: 7.5 rounds up
    assert scores(impl, t, ["n"], gpu=5, params=only(W_TOPO)) == [0]


def test_never_break_an_empty_node(impl: ModuleType) -> None:
    t = table(node_obj("empty", gpus=8), node_obj("half", gpus=8))
    set_used(t, "half", gpus=(0, 1, 2, 3))
    empty, half = scores(impl, t, ["empty", "half"], gpu=1)
    assert half > empty
    assert scores(impl, t, ["empty", "half"], gpu=1, params=only(W_PACK)) == [0, 6]  # 6.25
    # a pod that takes the whole node does not break it: packing is full
    assert scores(impl, t, ["empty"], gpu=8, params=only(W_PACK)) == [10]


def test_topology_prefers_exact_island_fill(impl: ModuleType) -> None:
    islands = [[0, 1, 2, 3], [4, 5, 6, 7]]
    t = table(node_obj("exact", gpus=8, islands=islands), node_obj("loose", gpus=8, islands=islands))
    set_used(t, "exact", gpus=(0, 1))  # free 2 + 4: a 2-GPU pod fills island 1
    set_used(t, "loose", gpus=(0, 4))  # free 3 + 3: same packing, but leaves one GPU of an island
    exact, loose = raw(impl, t, ["exact", "loose"], score_params(Config(), now=NOW), gpu=2)
    assert exact > loose


def test_load(impl: ModuleType) -> None:
    fresh, stale = iso(NOW - 60), iso(NOW - 301)
    t = table(
        node_obj("idle", load="0", load_time=fresh),
        node_obj("busy", load="1", load_time=fresh),
        node_obj("stale", load="0", load_time=stale),
        node_obj("unknown"),
        node_obj("edge", load="0", load_time=iso(NOW - 300)),
        node_obj("undated", load="0.2"),
    )
    names = ["idle", "busy", "stale", "unknown", "edge", "undated"]
    assert scores(impl, t, names, cpu=100, params=only(W_LOAD)) == [10, 0, 5, 5, 10, 5]
    assert scores(impl, t, names, cpu=100, params=only(W_LOAD, max_age=1e12)) == [10, 0, 10, 5, 10, 8]


def test_own_pool_above_borrowed(impl: ModuleType) -> None:
    t = table(node_obj("own", pool="a", gpus=8), node_obj("borrowed", pool="b", gpus=8))
    pool_ok = bytes([1, 2, 0])
    assert scores(impl, t, ["own", "borrowed"], gpu=1, pool_ok=pool_ok, params=only(W_POOL)) == [10, 0]
    own, borrowed = scores(impl, t, ["own", "borrowed"], gpu=1, pool_ok=pool_ok)
    assert own > borrowed


def test_least_and_most_allocated(impl: ModuleType) -> None:
    t = table(node_obj("empty", cpu="10", mem="10Gi"), node_obj("used", cpu="10", mem="10Gi"))
    set_used(t, "used", cpu=5000, mem=5 * GI)
    assert scores(impl, t, ["empty", "used"], cpu=1000, mem=GI, params=only(W_RES)) == [9, 4]
    assert scores(impl, t, ["empty", "used"], cpu=1000, mem=GI, params=only(W_RES, most=True)) == [1, 6]
    assert scores(impl, t, ["empty"], cpu=11_000, params=only(W_RES)) == [0]  # does not fit: 0


def test_cpu_pods_prefer_nodes_without_gpus(impl: ModuleType) -> None:
    t = table(node_obj("gpu", gpus=8), node_obj("plain"))
    gpu, plain = scores(impl, t, ["gpu", "plain"], cpu=1000, mem=GI)
    assert plain > gpu
    assert scores(impl, t, ["gpu", "plain"], cpu=1000, params=only(W_PACK)) == [0, 10]


def test_no_weights_scores_zero(impl: ModuleType) -> None:
    t = table(node_obj("n", gpus=8))
    params = array("d", [0.0] * N_PARAMS)
    params[P_NOW], params[MAX_AGE] = NOW, 300.0
    assert scores(impl, t, ["n"], gpu=1, params=params) == [0]


# --------------------------------------------------------------------------------------------------
# choose_devices (bind time; only the twin exists)
# --------------------------------------------------------------------------------------------------


def _mask(*gpus: int) -> int:
    return sum(1 << g for g in gpus)


def _devices(islands: list[list[int]], used: tuple[int, ...], gpu: int, topo: int) -> int:
    t = table(node_obj("n", gpus=8, islands=islands))
    set_used(t, "n", gpus=used)
    s = t.slot_of["n"]
    return kernels.choose_devices(t.islands, s, t.free_gpus(s), gpu, topo)


QUADS = [[0, 1, 2, 3], [4, 5, 6, 7]]
PAIRS = [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_choose_devices_best_fit_lowest_indices() -> None:
    assert _devices(QUADS, (0,), 2, 0) == _mask(1, 2)  # island 1 (3 free) fits best
    assert _devices(QUADS, (0,), 3, 2) == _mask(1, 2, 3)
    assert _devices(QUADS, (0,), 4, 1) == _mask(4, 5, 6, 7)  # only island 2 holds 4
    assert _devices(QUADS, (5,), 1, 0) == _mask(4)  # 3-free island 2 before the empty island 1
    assert _devices(PAIRS, (0, 2), 2, 2) == _mask(4, 5)  # lowest of the equally good islands
    assert _devices([[3, 1, 2, 0], [7, 6, 5, 4]], (), 8, 0) == 0xFF  # islands as listed, any order


def test_choose_devices_spans_fullest_islands_first() -> None:
    # island 1 has 2 free, island 2 has 3 free: no island holds 4, so take island 1's first
    for topo in (0, 1):
        assert _devices(QUADS, (0, 1, 4), 4, topo) == _mask(2, 3, 5, 6)
    # pairs with 1, 2, 1, 2 free: the 1-free islands go first, lowest index first
    assert _devices(PAIRS, (0, 4), 3, 0) == _mask(1, 5, 2)
    assert _devices(PAIRS, (0, 4), 6, 1) == _mask(1, 2, 3, 5, 6, 7)


def test_choose_devices_required_and_impossible() -> None:
    assert _devices(QUADS, (0, 1, 4), 4, 2) == 0  # required, and no island has 4 free
    assert _devices(QUADS, (0, 1, 4), 6, 0) == 0  # more than the node has free
    assert _devices(QUADS, (), 0, 0) == 0


# --------------------------------------------------------------------------------------------------
# Multi-resource fragmentation, CPU-only pods, scarcity, normalisation and the best tier
# --------------------------------------------------------------------------------------------------


def raw(
    mod: ModuleType, t: NodeTable, names: list[str], params: array, cpu: int = 0, mem: int = 0, gpu: int = 0
) -> list[float]:
    slots = array("i", [t.slot_of.get(n, -1) for n in names])
    out = array("d", bytes(8 * len(slots)))
    mod.score_raw(
        t, slots, cpu, mem, gpu, 0, b"\x01" * (len(t.pools) + 1), array("d", [0.0] * (len(t.pools) + 1)), params, out
    )
    return list(out)


def one_gpu_demand(cpu_per_gpu: int, weight_w: int = C.W_FRAG) -> array:
    """Only the fragmentation part (or `weight_w`), with recent asks all 1-GPU pods of `cpu_per_gpu` m."""
    p = only(weight_w)
    for b in range(C.DEMAND_BUCKETS):
        base = C.DEMAND_BASE + b * C.DEMAND_FIELDS
        p[base + C.D_GPUS] = float((1, 2, 4, 8)[b // 2])
        p[base + C.D_INV_GPUS] = 1.0 / (1, 2, 4, 8)[b // 2]
        p[base + C.D_WEIGHT] = 1.0 if b == 0 else 0.0
        p[base + C.D_CPU] = float(cpu_per_gpu)
        p[base + C.D_MEM] = float(GI)
    return p


def test_gpu_pod_avoids_stranding_gpus_by_cpu(impl: ModuleType) -> None:
    # Two 8-GPU nodes with 4 GPUs used. "tight" has 40 cores free, "roomy" 200: a 1-GPU pod asking 24 cores
    # leaves tight 16 cores for its 3 other free GPUs (typical ask 8 cores each: 1 becomes unusable, for
    # want of CPU, so it counts 1 + STRAND_EXTRA times); asking 32 cores it strands 2 (the part is 0).
    t = table(node_obj("tight", cpu="64", gpus=8), node_obj("roomy", cpu="224", gpus=8))
    set_used(t, "tight", cpu=24_000, gpus=(0, 1, 2, 3))
    set_used(t, "roomy", cpu=24_000, gpus=(0, 1, 2, 3))
    tight, roomy = raw(impl, t, ["tight", "roomy"], one_gpu_demand(8_000), cpu=24_000, gpu=1)
    # roomy: nothing newly unusable, 10 * (1 - (0 + 1) / (1 + 8)); tight: 1 more unusable GPU, stranded
    assert roomy == pytest.approx(10 * 8 / 9) and tight == pytest.approx(10 * (1 - (1 + 1 + C.STRAND_EXTRA) / 9))
    tight, roomy = raw(impl, t, ["tight", "roomy"], one_gpu_demand(8_000), cpu=32_000, gpu=1)
    assert roomy == pytest.approx(10 * 8 / 9) and tight == 0.0
    # A pod that leaves both nodes enough CPU scores the same on both.
    a, b = raw(impl, t, ["tight", "roomy"], one_gpu_demand(8_000), cpu=1_000, gpu=1)
    assert a == b == roomy


def test_cpu_pods_keep_off_idle_gpu_nodes(impl: ModuleType) -> None:
    t = table(
        node_obj("idle", cpu="96", gpus=8),
        node_obj("busy", cpu="96", gpus=8),
        node_obj("full", cpu="96", gpus=8),
        node_obj("plain", cpu="32", gpus=0),
    )
    set_used(t, "busy", cpu=8_000, gpus=(0, 1, 2, 3))
    set_used(t, "full", cpu=8_000, gpus=tuple(range(8)))
    idle, busy, full, plain = raw(impl, t, ["idle", "busy", "full", "plain"], one_gpu_demand(8_000, W_PACK), cpu=4_000)
    assert plain == 10.0 and idle == 0.0  # never break an empty GPU node while another fits
    assert full > busy > idle  # fewer free GPUs, less GPU capacity at stake


def test_cpu_pod_that_would_strand_gpus_scores_lower(impl: ModuleType) -> None:
    t = table(node_obj("a", cpu="64", gpus=8), node_obj("b", cpu="64", gpus=8))
    set_used(t, "a", cpu=0, gpus=(0, 1, 2, 3, 4, 5))  # 2 free GPUs, 64 cores free
    set_used(t, "b", cpu=0, gpus=(0, 1, 2, 3, 4, 5))
    p = one_gpu_demand(16_000, W_PACK)
    fine, stranding = raw(impl, t, ["a", "b"], p, cpu=16_000), raw(impl, t, ["b"], p, cpu=60_000)[0]
    assert stranding < fine[0]


def test_scarcity_keeps_unconstrained_pods_off_contested_models(impl: ModuleType) -> None:
    t = table(node_obj("a100", gpus=8, model=MODELS[0]), node_obj("l4", gpus=8, model=MODELS[2]))
    p = only(C.W_SCARCE)
    p[C.SCARCITY_BASE + t.model[t.slot_of["l4"]]] = 0.75
    assert raw(impl, t, ["a100", "l4"], p, gpu=1) == [10.0, 2.5]


def test_protected_model_ranks_below_every_other_for_a_pod_of_any_model(impl: ModuleType) -> None:
    # l4 scores 10 on topology, a100 only 1.25: by the mean l4 wins. Its model's pressure reaches PROTECT_AT,
    # so for a pod that accepts any model it scores a tenth of its mean (0..1) and every other node 1 + 0.9 x.
    t = table(node_obj("a100", gpus=8, model=MODELS[0]), node_obj("l4", gpus=1, model=MODELS[2]))
    p = only(W_TOPO)
    p[C.SCARCITY_BASE + t.model[t.slot_of["l4"]]] = 0.6
    p[C.PROTECT_AT] = 0.5
    assert raw(impl, t, ["a100", "l4"], p, gpu=1) == [1.25, 10.0]  # the tier is off: the mean alone
    p[C.POD_ANY_MODEL] = 1.0
    a100, l4 = raw(impl, t, ["a100", "l4"], p, gpu=1)
    assert a100 == pytest.approx(1.0 + 0.9 * 1.25) and l4 == pytest.approx(1.0)
    p[C.PROTECT_AT] = 0.7  # below the threshold: not protected, both nodes in the upper band
    assert raw(impl, t, ["a100", "l4"], p, gpu=1)[1] == pytest.approx(10.0)
    assert raw(impl, t, ["a100"], p)[0] == 0.0  # pods without GPUs: no tier (their mean here is 0)


def test_normalize_and_best_tier(impl: ModuleType) -> None:
    scores_out = array("q", bytes(8 * 5))
    impl.normalize_scores(array("d", [2.0, 6.0, 4.0, -1.0, 5.9]), scores_out)
    assert list(scores_out) == [0, 10, 5, 0, 10]
    same = array("q", bytes(16))
    impl.normalize_scores(array("d", [3.0, 3.0]), same)
    assert list(same) == [10, 10]
    verdicts_ = bytearray([C.OK, C.OK, C.OK, C.CPU, C.OK])
    # the failed node's higher score does not set the tier
    assert impl.best_tier(array("d", [2.0, 6.0, 5.6, 9.0, 5.4]), verdicts_, 0.5) == 2
    assert list(verdicts_) == [C.BETTER_FIT, C.OK, C.OK, C.CPU, C.BETTER_FIT]
    # the survivors' raw scores, in order (what prioritize after filter normalises)
    assert list(impl.pick_raw(array("d", [2.0, 6.0, 5.6, 9.0, 5.4]), bytes(verdicts_), C.OK)) == [6.0, 5.6]
    assert list(impl.pick_raw(array("d", []), b"", C.OK)) == []
    with pytest.raises(ValueError):
        impl.pick_raw(array("d", [1.0, 2.0]), b"\x00", C.OK)


# --------------------------------------------------------------------------------------------------
# Best fit, islandless topology and maintenance
# --------------------------------------------------------------------------------------------------


def test_best_fit_keeps_the_roomiest_node_free(impl: ModuleType) -> None:
    # Two empty 8-GPU nodes, one with 64 cores and one with 128: a small pod goes to the smaller one, so the
    # node only a big-CPU 8-GPU pod can use stays whole.
    t = table(node_obj("small", cpu="64", mem="512Gi", gpus=8), node_obj("roomy", cpu="128", mem="1024Gi", gpus=8))
    p = only(C.W_FIT)
    p[C.MAX_NODE_GPUS], p[C.MAX_NODE_CPU], p[C.MAX_NODE_MEM] = 8.0, 128_000.0, float(1024 * GI)
    small, roomy = raw(impl, t, ["small", "roomy"], p, cpu=4_000, mem=8 * GI, gpu=1)
    assert small == pytest.approx(10 * (1 - (7 / 8 + 60 / 128 + (512 - 8) / 1024) / 3))
    assert roomy == pytest.approx(10 * (1 - (7 / 8 + 124 / 128 + 1016 / 1024) / 3))
    assert small > roomy
    # Without a scale the node's own amounts stand in.
    p[C.MAX_NODE_GPUS] = p[C.MAX_NODE_CPU] = p[C.MAX_NODE_MEM] = 0.0
    assert raw(impl, t, ["small"], p, cpu=64_000, mem=512 * GI, gpu=8) == [10.0]


def test_topology_of_a_node_without_islands_is_best_fit_by_free_gpus(impl: ModuleType) -> None:
    t = table(node_obj("two", gpus=2), node_obj("eight", gpus=8), node_obj("quads", gpus=8, islands=QUADS))
    assert raw(impl, t, ["two", "eight", "quads"], only(W_TOPO), gpu=1) == [5.0, 10 * (1 - 7 / 8), 2.5]


def test_maintenance_scores_long_running_pods_off_the_node(impl: ModuleType) -> None:
    soon = iso(NOW + 3600)
    t = table(node_obj("due", gpus=8, maintenance=soon), node_obj("fine", gpus=8), node_obj("now", maintenance="now"))
    p = only(C.W_MAINT)
    assert raw(impl, t, ["due", "fine", "now"], p, gpu=1) == [0.0, 10.0, 0.0]  # no end stated: long-running
    p[C.POD_END] = NOW + 600  # ends before the window: no reason to keep off
    assert raw(impl, t, ["due", "fine", "now"], p, gpu=1) == [10.0, 10.0, 0.0]
    p[C.POD_END] = NOW + 7200
    assert raw(impl, t, ["due", "fine"], p) == [0.0, 10.0]  # pods without GPUs too
