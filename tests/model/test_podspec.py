"""What a pod asks for: effective requests exactly as kube-scheduler computes them
(k8s.io/component-helpers resource.PodRequests), Kubernetes quantities, and Berth's pod annotations."""

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.model.names import ANN_EXPECTED_RUNTIME, ANN_GPU_MODELS, ANN_TOPOLOGY_POLICY
from scheduler.model.podspec import PodError, effective_requests, pod_ask, pod_request
from tests.conftest import GoWire

GI, MI, KI = 1 << 30, 1 << 20, 1 << 10
GPU = "nvidia.com/gpu"


def c(
    name: str = "c",
    cpu: str | None = None,
    mem: str | None = None,
    sidecar: bool = False,
    limits: dict[str, Any] | None = None,
    **requests: Any,
) -> dict[str, Any]:
    req = dict(requests)
    if cpu is not None:
        req["cpu"] = cpu
    if mem is not None:
        req["memory"] = mem
    out: dict[str, Any] = {"name": name, "image": "busybox", "resources": {"requests": req}}
    if limits is not None:
        out["resources"]["limits"] = limits
    if sidecar:
        out["restartPolicy"] = "Always"
    return out


def spec(
    containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None, overhead: dict[str, Any] | None = None
) -> dict[str, Any]:
    s: dict[str, Any] = {"containers": containers}
    if init is not None:
        s["initContainers"] = init
    if overhead is not None:
        s["overhead"] = overhead
    return s


def pod(annotations: dict[str, Any] | None = None, **spec_fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "annotations": annotations or {}},
        "spec": {"containers": [c(cpu="1", mem="1Gi")], **spec_fields},
    }


# -- effective requests ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (spec([c(cpu="1", mem="1Gi"), c(cpu="500m", mem="512Mi")]), {"cpu": 1500, "memory": GI + 512 * MI}),
        # an init container bigger than the app containers sets the request
        (spec([c(cpu="1"), c(cpu="1")], [c(cpu="3")]), {"cpu": 3000}),
        # per resource: cpu from the app containers, memory from the init container
        (spec([c(cpu="4", mem="1Gi")], [c(cpu="1", mem="8Gi")]), {"cpu": 4000, "memory": 8 * GI}),
        # a sidecar before an init container runs beside it, and beside the app containers
        (spec([c(cpu="1")], [c(cpu="1", sidecar=True), c(cpu="2")]), {"cpu": 3000}),
        # a sidecar after an init container does not overlap it
        (spec([c(cpu="1")], [c(cpu="2"), c(cpu="1", sidecar=True)]), {"cpu": 2000}),
        # sidecars accumulate for the init containers after them
        (spec([c(cpu="500m")], [c(cpu="1", sidecar=True), c(cpu="2", sidecar=True), c(cpu="1")]), {"cpu": 4000}),
        (spec([c(cpu="500m")], [c(cpu="1", sidecar=True), c(cpu="2", sidecar=True)]), {"cpu": 3500}),
        # overhead is added after the max
        (spec([c(cpu="1")], [c(cpu="2")], {"cpu": "250m", "memory": "160Mi"}), {"cpu": 2250, "memory": 160 * MI}),
        # extended resources come from limits when only limits are set (the API server defaults requests)
        (spec([c(cpu="1", limits={GPU: "2"})], [c(limits={GPU: "1"})]), {"cpu": 1000, GPU: 2}),
        (spec([c(limits={GPU: "4"}, **{GPU: "4"})]), {GPU: 4}),
        (spec([c(limits={"example.com/fpga": "1"})]), {"example.com/fpga": 1}),
        # cpu and memory count from requests only, as kube-scheduler reads them
        (spec([c(limits={"cpu": "2", "memory": "2Gi"})]), {}),
        (spec([c(cpu="1", limits={"cpu": "2"})]), {"cpu": 1000}),
        (spec([]), {}),
    ],
)
def test_effective_requests(s: dict[str, Any], expected: dict[str, int]) -> None:
    assert {k: v for k, v in effective_requests(s).items() if v} == expected


def test_recorded_training_pod(go: GoWire) -> None:
    """The Go-shaped fixture: trainer 8 cpu/64Gi/2 GPUs, an init container of 2 cpu/8Gi before a 250m/256Mi
    sidecar, and 250m/160Mi runtime overhead."""
    ask = pod_ask(go.pod_object())
    assert (ask.namespace, ask.name, ask.uid, ask.priority) == (
        "ml-research",
        "train-llama-7f9c4-0",
        "3f0e8a52-6d1b-4c8e-9b7a-2d5f1c0e4a91",
        1000,
    )
    r = ask.request
    assert (r.cpu, r.memory, r.gpu, r.other) == (8500, 64 * GI + 256 * MI + 160 * MI, 2, {})
    assert ask.gpu_models == ("NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-SXM4-80GB")
    assert ask.topology == 1


def kube_pod_requests(app: list[int], init: list[tuple[int, bool]], overhead: int) -> int:
    """A transcription of resource.PodRequests for one resource (upstream's loop, kept as written)."""
    reqs = sum(app)
    restartable = 0
    init_reqs = 0
    for amount, sidecar in init:
        container = amount
        if sidecar:
            reqs += amount
            restartable += amount
            container = restartable
        else:
            container = amount + restartable
        init_reqs = max(init_reqs, container)
    return max(reqs, init_reqs) + overhead


@settings(max_examples=200, deadline=None)
@given(
    app=st.lists(st.integers(0, 64_000), max_size=4),
    init=st.lists(st.tuples(st.integers(0, 64_000), st.booleans()), max_size=5),
    overhead=st.integers(0, 2_000),
)
def test_effective_requests_match_kube_scheduler(app: list[int], init: list[tuple[int, bool]], overhead: int) -> None:
    s = spec([c(cpu=f"{m}m") for m in app], [c(cpu=f"{m}m", sidecar=sc) for m, sc in init], {"cpu": f"{overhead}m"})
    assert effective_requests(s).get("cpu", 0) == kube_pod_requests(app, init, overhead)


# -- quantities --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cpu", "millicores"),
    [
        ("500m", 500),
        ("0.5", 500),
        ("1.5", 1500),
        ("2", 2000),
        ("1e3", 1_000_000),
        ("100m", 100),
        ("0.1m", 1),
        ("250u", 1),
        (2, 2000),
        (0.25, 250),
        ("1k", 1_000_000),
    ],
)
def test_cpu_quantities(cpu: Any, millicores: int) -> None:
    assert pod_request(spec([c(cpu=cpu)])).cpu == millicores


@pytest.mark.parametrize(
    ("mem", "size"),
    [
        ("1.5Gi", 3 * GI // 2),
        ("64Gi", 64 * GI),
        ("100Ki", 100 * KI),
        ("1e3", 1000),
        ("128974848", 128974848),
        ("129M", 129_000_000),
        ("123Mi", 123 * MI),
        ("1Ti", 1 << 40),
        ("0.5Ki", 512),
        ("1m", 1),
    ],
)
def test_memory_quantities(mem: str, size: int) -> None:
    assert pod_request(spec([c(mem=mem)])).memory == size


def test_request_split_into_fields() -> None:
    r = pod_request(
        spec(
            [
                c(
                    cpu="1",
                    mem="1Gi",
                    limits={GPU: "2", "example.com/fpga": "1"},
                    **{"ephemeral-storage": "10Gi", "pods": "1"},
                )
            ]
        )
    )
    assert (r.cpu, r.memory, r.gpu, r.other) == (1000, GI, 2, {"example.com/fpga": 1})


@pytest.mark.parametrize(
    "bad",
    [
        "abc",
        "1.5.5",
        "",
        "Gi",
        "1Zi",
        "--1",
        "NaN",
        "Infinity",
        "1e1000000",
        [],
        {},
        None,
        True,
        "-1",
        "1E",
        "9223372036854775807",
    ],
)
def test_bad_quantity_is_a_pod_error(bad: Any) -> None:
    with pytest.raises(PodError, match="container 'c'"):
        pod_request(spec([{"name": "c", "resources": {"requests": {"cpu": bad}}}]))


def test_bad_quantity_in_overhead_and_totals() -> None:
    with pytest.raises(PodError, match="overhead"):
        pod_request(spec([c(cpu="1")], overhead={"cpu": "lots"}))
    with pytest.raises(PodError, match="overhead"):
        pod_request(spec([c(cpu="1")], overhead=["cpu"]))  # type: ignore[arg-type]
    with pytest.raises(PodError):  # each fits, the sum does not
        pod_request(spec([c(mem="3Ei"), c(mem="3Ei")]))
    with pytest.raises(PodError):
        pod_request(spec([c(limits={GPU: "100000000"})]))


@pytest.mark.parametrize("huge", ["1e999999", "1e300000Ei", "-1e999999", "9" * 5000, "1e20"])
def test_huge_quantities_are_refused_at_once(huge: str) -> None:
    """Turning "1e999999" into an int takes minutes: it must be refused before that, not after."""
    started = time.perf_counter()
    for resource in ("cpu", "memory", GPU):
        with pytest.raises(PodError, match=resource):
            pod_request(spec([{"name": "c", "resources": {"requests": {resource: huge}}}]))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "bad_spec",
    [
        {"containers": ["main"]},
        {"containers": [{"name": "c", "resources": "big"}]},
        {"containers": [{"name": "c", "resources": {"requests": ["cpu"]}}]},
        {"containers": [{"name": "c", "resources": {"limits": "2"}}]},
        {"containers": [], "initContainers": [7]},
    ],
)
def test_malformed_containers(bad_spec: dict[str, Any]) -> None:
    with pytest.raises(PodError):
        pod_request(bad_spec)


@pytest.mark.parametrize(
    "bad_pod",
    [
        [],
        "pod",
        {"metadata": {}},
        {"spec": {}},
        {"metadata": [], "spec": {}},
        {"metadata": {}, "spec": {"containers": {"a": 1}}},
        {"metadata": {}, "spec": {"initContainers": "x"}},
        {"metadata": {"annotations": ["a"]}, "spec": {}},
        {"metadata": {}, "spec": {"priority": "high"}},
        {"metadata": {}, "spec": {"priority": 1.5}},
    ],
)
def test_malformed_pods(bad_pod: Any) -> None:
    with pytest.raises(PodError):
        pod_ask(bad_pod)


def test_pod_defaults() -> None:
    ask = pod_ask({"metadata": {"name": "p"}, "spec": {"containers": [c(cpu="1")]}})
    assert (ask.namespace, ask.uid, ask.priority, ask.node_name, ask.gpu_models, ask.topology) == (
        "default",
        "",
        0,
        "",
        (),
        0,
    )
    assert pod_ask({"metadata": {}, "spec": {"nodeName": "n1"}}).node_name == "n1"


# -- annotations -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "models"),
    [
        ("NVIDIA-H100-80GB-HBM3", ("NVIDIA-H100-80GB-HBM3",)),
        ("NVIDIA-L4, NVIDIA-A100-SXM4-80GB", ("NVIDIA-A100-SXM4-80GB", "NVIDIA-L4")),
        (" NVIDIA-L4 ,,NVIDIA-L4, ", ("NVIDIA-L4",)),
        ("", ()),
        (",", ()),
    ],
)
def test_gpu_models(raw: str, models: tuple[str, ...]) -> None:
    assert pod_ask(pod({ANN_GPU_MODELS: raw})).gpu_models == models


@pytest.mark.parametrize("bad", [7, ["NVIDIA-L4"], {"m": 1}])
def test_gpu_models_errors(bad: Any) -> None:
    with pytest.raises(PodError, match=ANN_GPU_MODELS):
        pod_ask(pod({ANN_GPU_MODELS: bad}))


@pytest.mark.parametrize(("raw", "mode"), [("none", 0), ("preferred", 1), ("required", 2)])
def test_topology(raw: str, mode: int) -> None:
    assert pod_ask(pod({ANN_TOPOLOGY_POLICY: raw})).topology == mode
    assert pod_ask(pod()).topology == 0


@pytest.mark.parametrize("bad", ["Required", "strict", " required", 2, ["required"], {"mode": "required"}, None])
def test_topology_errors(bad: Any) -> None:
    with pytest.raises(PodError, match=ANN_TOPOLOGY_POLICY) as err:
        pod_ask(pod({ANN_TOPOLOGY_POLICY: bad}))
    assert "required, preferred, none" in str(err.value)


# -- the adversarial pass (docs/hardening.md): what Go's decoder and Kubernetes' grammar refuse --------------
def _pod(requests: dict[str, object] | None = None, **spec: object) -> dict[str, object]:
    body: dict[str, object] = {"containers": [{"name": "c", "resources": {"requests": requests or {}}}]}
    body.update(spec)
    return {"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": body}


@pytest.mark.parametrize("text", ["1_000", "\u0661", "\uff11", "1K", "1e3m", "1e3Ki", "1e", ".", "0x10", "1 Gi"])
def test_a_quantity_outside_kubernetes_grammar_is_refused(text: str) -> None:
    """Python's Decimal read these (underscores, other scripts' digits, suffixes Go has not): pods Go refuses."""
    for resource in ("cpu", "memory", "nvidia.com/gpu", "example.com/x"):
        with pytest.raises(PodError, match="not a Kubernetes quantity"):
            pod_ask(_pod({resource: text}))


@pytest.mark.parametrize(
    ("text", "milli"), [(" 1", 1000), ("5.", 5000), (".5", 500), ("+1", 1000), ("1e-3", 1), ("2E0", 2000)]
)
def test_a_quantity_go_reads_is_still_read(text: str, milli: int) -> None:
    assert pod_ask(_pod({"cpu": text})).request.cpu == milli


@pytest.mark.parametrize(
    "meta", [{"name": 5}, {"name": {"a": 1}}, {"name": "p", "namespace": [1]}, {"name": "p", "uid": {"a": 1}}]
)
def test_pod_names_that_are_not_strings_are_refused(meta: dict[str, object]) -> None:
    """str() made `{"name": 5}` the pod "5" and a dict its own repr."""
    pod = _pod()
    pod["metadata"] = meta
    with pytest.raises(PodError, match="must be a string"):
        pod_ask(pod)
    with pytest.raises(PodError, match="must be a string"):
        pod_ask(_pod(nodeName=7))


@pytest.mark.parametrize("priority", [True, 2**31, -(2**31) - 1, 2**63 - 1])
def test_a_priority_outside_int32_is_refused(priority: object) -> None:
    with pytest.raises(PodError, match="32-bit"):
        pod_ask(_pod(priority=priority))
    assert pod_ask(_pod(priority=2**31 - 1)).priority == 2**31 - 1


@pytest.mark.parametrize("text", ["\u0663\u0660", "\u0663m", "\uff13h"])
def test_an_expected_runtime_in_other_digits_is_refused(text: str) -> None:
    """int() and isdigit() take Arabic-Indic and full-width digits: "٣٠" was 30 seconds."""
    pod = _pod()
    pod["metadata"]["annotations"] = {ANN_EXPECTED_RUNTIME: text}  # type: ignore[index]
    with pytest.raises(PodError, match="expected-runtime"):
        pod_ask(pod)


def test_a_name_longer_than_kubernetes_allows_is_refused() -> None:
    """The ask was remembered for ten minutes (cluster/seen.py) with its name: a megabyte per request."""
    for field in ("name", "namespace", "uid"):
        pod = _pod()
        pod["metadata"][field] = "a" * 254  # type: ignore[index]
        with pytest.raises(PodError, match="at most 253"):
            pod_ask(pod)
    assert pod_ask(_pod(nodeName="n" * 253)).node_name == "n" * 253
    with pytest.raises(PodError, match="at most 253"):
        pod_ask(_pod(nodeName="n" * 254))


def test_a_long_quantity_is_read_but_not_memoised() -> None:
    """8,192 memo entries of a megabyte-long "0.000...1" each were kept (1 MB more RSS per filter)."""
    from scheduler.model import quantity

    text = "0." + "0" * 100_000 + "1"
    assert pod_ask(_pod({"cpu": text})).request.cpu == 1
    assert (True, text) not in quantity._UNITS
    assert pod_ask(_pod({"cpu": "250m"})).request.cpu == 250 and (True, "250m") in quantity._UNITS
