"""What a pod asks for, computed as kube-scheduler computes it (resourcehelper.PodRequests).

The effective request is max(sum of app containers + sidecars, each init container + the sidecars
started before it) plus pod overhead, per resource. Extended resources count from requests, or from
limits where only limits are set (the API server defaults requests from limits for those).
"""

from dataclasses import dataclass, field
from typing import Any

from scheduler.model.constants import (
    GPU_MILLI,
    MAX_GPU_REQUEST,
    MAX_UNITS,
    TOPOLOGY_NONE,
    TOPOLOGY_PREFERRED,
    TOPOLOGY_REQUIRED,
)
from scheduler.model.names import (
    ANN_EXPECTED_RUNTIME,
    ANN_GPU_FRACTION,
    ANN_GPU_MODELS,
    ANN_TOPOLOGY_POLICY,
    GPU,
    GPU_SHARED,
)
from scheduler.model.quantity import QuantityError, QuantityRangeError, to_units

TOPOLOGY_MODES = {"none": TOPOLOGY_NONE, "preferred": TOPOLOGY_PREFERRED, "required": TOPOLOGY_REQUIRED}
# Kubernetes names: a pod's and a node's are DNS subdomains of at most 253 characters, a namespace a label of 63,
# a UID 36 (the same bound as a bind's, extender/wire.py MAX_NAME). A longer one is no real pod's; the ask
# parsed from it was remembered for ten minutes (cluster/seen.py), a megabyte of name per request.
MAX_NAME = 253
ASK_BASE = 512  # bytes of a PodAsk, its PodRequest, dicts and the seen cache's entry, strings aside


class PodError(ValueError):
    """The pod itself cannot be judged (a malformed quantity, a bad annotation)."""


@dataclass(slots=True)
class PodRequest:
    """The resources one pod holds while it runs, in Berth's integer units."""

    cpu: int = 0  # millicores
    memory: int = 0  # bytes
    gpu: int = 0
    other: dict[str, int] = field(default_factory=dict)  # extended resources besides the GPU ones
    gpu_shared: int = 0  # replicas of nvidia.com/gpu.shared (the device plugin's renamed shared GPUs)
    gpu_fraction: int = 0  # milli of one GPU from berth.dev/gpu-fraction; 0: not stated

    def as_dict(self) -> dict[str, int]:
        out = {"cpu": self.cpu, "memory": self.memory, GPU: self.gpu, GPU_SHARED: self.gpu_shared}
        out.update(self.other)
        return {k: v for k, v in out.items() if v}

    @property
    def sharing(self) -> bool:
        """The pod may hold a fraction of a GPU (the kernels' shared path decides per node)."""
        return self.gpu_shared > 0 or self.gpu_fraction > 0

    def nominal_gpu_milli(self, replicas: tuple[int, int] = (1, 1)) -> int:
        """The least GPU milli the pod can hold on any node, what quotas admit it with before a node is
        chosen (bind then checks what it holds exactly). `replicas`: the most replicas per GPU among the
        nodes that share `nvidia.com/gpu` and among those offering `nvidia.com/gpu.shared` (1: none)."""
        k, most = (self.gpu_shared, replicas[1]) if self.gpu_shared else (self.gpu, replicas[0])
        if k <= 0:
            return 0
        if most <= 1:  # no node shares this resource: whole GPUs, as the device plugin hands them out
            return k * GPU_MILLI
        return max(-(-k * GPU_MILLI // most), self.gpu_fraction)

    def quota_units(self, gpu_milli: int | None = None, replicas: tuple[int, int] = (1, 1)) -> dict[str, int]:
        """What quotas count: as_dict with nvidia.com/gpu in milli (`gpu_milli`: what the pod holds once
        placed, else the nominal ask)."""
        out = self.as_dict()
        out.pop(GPU, None)
        milli = self.nominal_gpu_milli(replicas) if gpu_milli is None else gpu_milli
        if milli:
            out[GPU] = milli
        return out


@dataclass(slots=True)
class PodAsk:
    """A pod as the filter and score kernels see it."""

    namespace: str
    name: str
    uid: str
    request: PodRequest
    priority: int
    gpu_models: tuple[str, ...]  # acceptable GPU models; empty means any
    topology: int  # TOPOLOGY_MODES value (TOPOLOGY_NONE, _PREFERRED, _REQUIRED)
    node_name: str
    runtime: float = 0.0  # seconds the pod runs at most (berth.dev/expected-runtime, activeDeadlineSeconds); 0: long
    cost: int = ASK_BASE  # estimated bytes it holds (cluster/seen.py keeps asks within a byte budget by it)


def _container_requests(container: Any) -> dict[str, int]:
    if not isinstance(container, dict):
        raise PodError("a container is not an object")
    resources = container.get("resources") or {}
    if not isinstance(resources, dict):
        raise PodError(f"container {container.get('name')!r}: resources must be an object")
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    if not isinstance(requests, dict) or not isinstance(limits, dict):
        raise PodError(f"container {container.get('name')!r}: resources must be objects")
    merged = {k: v for k, v in limits.items() if k not in ("cpu", "memory")}
    merged.update(requests)
    return {name: _units(name, value, f"container {container.get('name')!r}") for name, value in merged.items()}


def _units(resource: str, value: Any, where: str) -> int:
    try:
        amount = to_units(resource, value)  # memoised there
    except QuantityRangeError:
        raise PodError(f"{where}: {resource} {_short(value)} is far beyond what any node has") from None
    except (QuantityError, ArithmeticError, ValueError) as exc:  # also Decimal overflow, NaN, Infinity
        raise PodError(f"{where}: {resource}: {_short(value)} is not a Kubernetes quantity") from exc
    _check_range(resource, amount, where)
    return amount


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:36]}...{text[-1]}"


def _check_range(resource: str, amount: int, where: str) -> None:
    limit = MAX_GPU_REQUEST if resource == GPU else MAX_UNITS
    if not 0 <= amount < limit:
        raise PodError(f"{where}: {resource} must be from 0 to {limit - 1} units, got {amount}")


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _max(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        if v > into.get(k, 0):
            into[k] = v


def effective_requests(spec: dict[str, Any]) -> dict[str, int]:
    """Per-resource effective request of a pod spec (see the module docstring)."""
    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        _add(total, _container_requests(c))
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for ic in spec.get("initContainers") or []:
        req = _container_requests(ic)
        if ic.get("restartPolicy") == "Always":  # a sidecar keeps running beside the app containers
            _add(total, req)
            _add(sidecars, req)
            _max(init_peak, sidecars)
        else:
            with_sidecars = dict(sidecars)
            _add(with_sidecars, req)
            _max(init_peak, with_sidecars)
    _max(total, init_peak)
    overhead = spec.get("overhead") or {}
    if not isinstance(overhead, dict):
        raise PodError("spec.overhead must be an object")
    _add(total, {k: _units(k, v, "spec.overhead") for k, v in overhead.items()})
    for k, v in total.items():
        _check_range(k, v, "the pod's total request")
    return total


def pod_request(spec: dict[str, Any]) -> PodRequest:
    reqs = effective_requests(spec)
    cpu = reqs.pop("cpu", 0)
    memory = reqs.pop("memory", 0)
    gpu = reqs.pop(GPU, 0)
    for key in ("pods", "ephemeral-storage"):  # not tracked per node by Berth; in-tree fit checks them
        reqs.pop(key, None)
    shared = reqs.pop(GPU_SHARED, 0)
    if shared >= MAX_GPU_REQUEST:  # the kernels take replicas as 32-bit counts, as GPUs
        raise PodError(f"the pod's total request: {GPU_SHARED} must be from 0 to {MAX_GPU_REQUEST - 1} units")
    return PodRequest(cpu=cpu, memory=memory, gpu=gpu, other={k: v for k, v in reqs.items() if v}, gpu_shared=shared)


def gpu_fraction(annotations: dict[str, Any]) -> int:
    """berth.dev/gpu-fraction in milli of one GPU ("0.5", "500m", "0.25"); 0 when absent. A quantity
    above 0 and at most 1 (1 is a whole GPU); rounded up to whole milli."""
    raw = annotations.get(ANN_GPU_FRACTION)
    if raw is None or raw == "":
        return 0
    try:
        milli = to_units("cpu", raw)  # a quantity in thousandths: what cpu's millicores are
    except (QuantityError, ArithmeticError, ValueError):
        raise PodError(f"{ANN_GPU_FRACTION} must be a fraction of one GPU such as 0.5 or 250m (got {raw!r})") from None
    if not 0 < milli <= GPU_MILLI:
        raise PodError(f"{ANN_GPU_FRACTION} must be above 0 and at most 1 GPU (got {raw!r})")
    return milli


def pod_ask(pod: Any) -> PodAsk:
    """Parse the Pod object kube-scheduler sends; raises PodError when it cannot be judged."""
    if not isinstance(pod, dict):
        raise PodError("Pod must be an object")
    meta = pod.get("metadata")
    spec = pod.get("spec")
    if not isinstance(meta, dict) or not isinstance(spec, dict):
        raise PodError("Pod needs metadata and spec objects")
    if not isinstance(spec.get("containers") or [], list) or not isinstance(spec.get("initContainers") or [], list):
        raise PodError("Pod.spec.containers and initContainers must be lists")
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise PodError("Pod.metadata.annotations must be an object")
    priority = spec.get("priority") or 0
    # PodSpec.priority is an int32 (Go refuses the whole object otherwise; true is no number there either)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -(2**31) <= priority < 2**31:
        raise PodError("Pod.spec.priority must be a 32-bit integer")
    request = pod_request(spec)
    request.gpu_fraction = gpu_fraction(annotations)
    ask = PodAsk(
        namespace=_string(meta, "namespace", "metadata") or "default",
        name=_string(meta, "name", "metadata"),
        uid=_string(meta, "uid", "metadata"),
        request=request,
        priority=priority,
        gpu_models=_gpu_models(annotations),
        topology=_topology(annotations),
        node_name=_string(spec, "nodeName", "spec"),
        runtime=expected_runtime(annotations, spec),
    )
    ask.cost = (
        ASK_BASE
        + len(ask.namespace)
        + len(ask.name)
        + len(ask.uid)
        + len(ask.node_name)
        + sum(len(k) + 100 for k in request.other)  # a key, an int and a dict slot
        + sum(len(m) + 60 for m in ask.gpu_models)
    )
    return ask


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    """A string field of the Pod, "" when absent or null. Anything else is refused, as Go's decoder refuses
    it: str() made `{"name": 5}` the pod "5" and a dict its own repr, judged and remembered under it."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PodError(f"Pod.{where}.{key} must be a string")
    if len(value) > MAX_NAME:
        raise PodError(f"Pod.{where}.{key}: {len(value)} characters; Kubernetes names have at most {MAX_NAME}")
    return value


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_RUNTIME = 10 * 365 * 86400.0  # ten years: past any maintenance window


def expected_runtime(annotations: dict[str, Any], spec: dict[str, Any]) -> float:
    """Seconds the pod runs at most: berth.dev/expected-runtime ("3600", "90m", "2h30m", "1d"), else
    spec.activeDeadlineSeconds (the kubelet ends the pod then); 0 when neither says: a long-running pod."""
    raw = annotations.get(ANN_EXPECTED_RUNTIME)
    if raw is None:
        deadline = spec.get("activeDeadlineSeconds")
        if isinstance(deadline, int) and not isinstance(deadline, bool) and deadline > 0:
            return min(float(deadline), MAX_RUNTIME)
        return 0.0
    text = str(raw).strip().lower()
    try:
        if not text.isascii():  # int() and isdigit() take other scripts' digits ("٣٠" was 30 s)
            raise ValueError(text)
        if text and text[-1].isdigit():
            seconds = float(int(text))
        else:
            seconds, number = 0.0, ""
            for ch in text:
                if ch.isdigit():
                    number += ch
                elif ch in _DURATION_UNITS and number:
                    seconds += int(number) * _DURATION_UNITS[ch]
                    number = ""
                else:
                    raise ValueError(ch)
            if number or not text:
                raise ValueError(text)
    except ValueError:
        raise PodError(
            f"{ANN_EXPECTED_RUNTIME} must be seconds or a duration such as 90m or 2h (got {_short(raw)})"
        ) from None
    if seconds <= 0:
        raise PodError(f"{ANN_EXPECTED_RUNTIME} must be above 0 (got {_short(raw)})")
    return min(seconds, MAX_RUNTIME)


def _gpu_models(annotations: dict[str, Any]) -> tuple[str, ...]:
    raw = annotations.get(ANN_GPU_MODELS)
    if not raw:
        return ()
    if not isinstance(raw, str):
        raise PodError(f"{ANN_GPU_MODELS} must be a comma-separated string")
    return tuple(sorted({m.strip() for m in raw.split(",") if m.strip()}))


def _topology(annotations: dict[str, Any]) -> int:
    raw = annotations.get(ANN_TOPOLOGY_POLICY, "none")
    if not isinstance(raw, str) or raw not in TOPOLOGY_MODES:
        raise PodError(f"{ANN_TOPOLOGY_POLICY} must be one of required, preferred, none (got {raw!r})")
    return TOPOLOGY_MODES[raw]
