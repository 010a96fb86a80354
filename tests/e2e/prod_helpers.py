"""Shared by the production-readiness end-to-end tests (tests/e2e/test_prod_*.py): bursts of GPU pods that
ride out a flaky API server, a sampler reading the API server all along, the GPU invariants themselves,
Berth's cache against a fresh list, mTLS certificates and a Berth handle for TLS mode."""

import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import urllib3
from kubernetes import client as kclient
from kubernetes.client.rest import ApiException

from scheduler.model.quantity import whole
from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import pod
from tests.e2e.test_live_cluster import _api_view, _berth_view

GPU = "nvidia.com/gpu"
GPU_IDS = "berth.dev/gpu-ids"
MAKE_CERTS = h.ROOT / "scripts" / "make-certs.sh"


# -- pods --------------------------------------------------------------------------------------------------
def gpus_of(p: kclient.V1Pod) -> int:
    return sum(whole(((c.resources and c.resources.limits) or {}).get(GPU, "0")) for c in p.spec.containers)


def create_pod(api: kclient.CoreV1Api, ns: str, body: dict[str, Any], timeout: float = 90) -> None:
    """Create a pod, retrying while the API server is away. A create whose reply was lost comes back 409."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.create_namespaced_pod(ns, body)
            return
        except ApiException as exc:
            if exc.status == 409:
                return
            if exc.status not in (0, 429, 500, 502, 503, 504):
                raise
            err: Exception = exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            err = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not create {ns}/{body['metadata']['name']} in {timeout}s: {err}")
        time.sleep(0.3)


def burst(
    api: kclient.CoreV1Api,
    ns: str,
    group: str,
    sizes: Iterable[int],
    scheduler: str,
    prefix: str = "p",
    during: Mapping[int, Callable[[], Any]] | None = None,
    every: float = 0.0,
    cpu: str = "500m",
) -> list[str]:
    """Create one pod per size (GPUs asked); `during[i]` runs just before pod i is created."""
    names = []
    for i, gpus in enumerate(sizes):
        if during and i in during:
            during[i]()
        name = f"{prefix}-{i:02d}-g{gpus}"
        create_pod(api, ns, pod(name, group, gpus=gpus, cpu=cpu, scheduler=scheduler))
        names.append(name)
        if every:
            time.sleep(every)
    return names


def wait_all_bound(api: kclient.CoreV1Api, ns: str, names: Iterable[str], timeout: float) -> dict[str, str]:
    """Wait until every named pod has spec.nodeName; returns pod -> node. API errors are retried."""
    want = list(names)
    deadline = time.monotonic() + timeout
    unbound: list[str] = want
    while time.monotonic() < deadline:
        try:
            nodes = {p.metadata.name: p.spec.node_name for p in api.list_namespaced_pod(ns).items}
        except (ApiException, urllib3.exceptions.HTTPError, OSError):
            time.sleep(0.5)
            continue
        unbound = [n for n in want if not nodes.get(n)]
        if not unbound:
            return {n: nodes[n] for n in want}
        time.sleep(0.3)
    reasons = {}
    for name in unbound[:5]:
        evs = api.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        reasons[name] = [f"{e.reason}: {e.message}" for e in evs][-2:]
    raise AssertionError(
        f"{len(unbound)} of {len(want)} pods still unbound after {timeout}s: {unbound}; last events: {reasons}"
    )


def bound_count(api: kclient.CoreV1Api, ns: str) -> int:
    return sum(1 for p in api.list_namespaced_pod(ns).items if p.spec.node_name)


def delete_group(api: kclient.CoreV1Api, ns: str, group: str) -> None:
    """Remove a test's pods and nodes (namespaces stay: without kube-controller-manager they never finish
    terminating)."""
    for p in api.list_namespaced_pod(ns).items:
        with contextlib.suppress(ApiException):
            api.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)
    for n in api.list_node(label_selector=f"e2e-group={group}").items:
        with contextlib.suppress(ApiException):
            api.delete_node(n.metadata.name)


# -- invariants --------------------------------------------------------------------------------------------
def gpu_problems(pods: Iterable[kclient.V1Pod], capacity: Mapping[str, int], require_ids: bool = True) -> list[str]:
    """What breaks the GPU invariants among the bound pods on the nodes of `capacity` (node -> GPUs): a node
    holding more GPUs than it has, a GPU index held by two pods, an index the node does not have, and (with
    require_ids) a GPU pod whose berth.dev/gpu-ids does not name exactly as many GPUs as it asked for."""
    problems: list[str] = []
    held: dict[str, int] = {}
    owner: dict[tuple[str, int], str] = {}
    for p in pods:
        node = p.spec.node_name
        if node not in capacity or p.status.phase in ("Succeeded", "Failed"):
            continue
        gpus = gpus_of(p)
        held[node] = held.get(node, 0) + gpus
        raw = (p.metadata.annotations or {}).get(GPU_IDS)
        if not gpus:
            continue
        if raw is None:
            if require_ids:
                problems.append(f"{p.metadata.name} holds {gpus} GPUs of {node} without {GPU_IDS}")
            continue
        ids = [int(i) for i in raw.split(",") if i.strip()]
        if len(set(ids)) != gpus:
            problems.append(f"{p.metadata.name} asked {gpus} GPUs but {GPU_IDS}={raw!r}")
        for i in ids:
            if not 0 <= i < capacity[node]:
                problems.append(f"{p.metadata.name} holds GPU {i}, which {node} (of {capacity[node]}) lacks")
            other = owner.setdefault((node, i), p.metadata.name)
            if other != p.metadata.name:
                problems.append(f"GPU {i} of {node} held by both {other} and {p.metadata.name}")
    problems += [f"{node} holds {n} GPUs of {capacity[node]}" for node, n in held.items() if n > capacity[node]]
    return problems


def assert_gpu_invariants(api: kclient.CoreV1Api, capacity: Mapping[str, int]) -> None:
    """The invariants over every pod (all namespaces) on the nodes of `capacity`, from a fresh list."""
    problems = gpu_problems(api.list_pod_for_all_namespaces().items, capacity)
    assert not problems, problems


class GpuSampler(threading.Thread):
    """Reads the API server every `every` seconds while it runs and checks the GPU invariants of the pods on
    the nodes of `capacity` at every sample. Failed reads (an API server restart) are counted, not raised."""

    def __init__(self, api: kclient.CoreV1Api, capacity: Mapping[str, int], every: float = 0.2) -> None:
        super().__init__(daemon=True, name="gpu-sampler")
        self.api, self.capacity, self.every = api, dict(capacity), every
        self.samples = 0
        self.errors = 0
        self.max_held = 0
        self.timeline: list[tuple[float, int]] = []  # (monotonic time, GPUs held on the nodes) per sample
        self.problems: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                pods = self.api.list_pod_for_all_namespaces(_request_timeout=5).items
            except Exception:  # the API server may be restarting
                self.errors += 1
            else:
                self.samples += 1
                found = gpu_problems(pods, self.capacity)
                self.problems += [f"t={time.strftime('%H:%M:%S')}: {p}" for p in found]
                held = sum(gpus_of(p) for p in pods if p.spec.node_name in self.capacity)
                self.max_held = max(self.max_held, held)
                self.timeline.append((time.monotonic(), held))
            self._halt.wait(self.every)

    def __enter__(self) -> "GpuSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(10)

    def assert_clean(self, min_samples: int = 10) -> None:
        assert self.samples >= min_samples, f"only {self.samples} samples ({self.errors} failed reads)"
        assert not self.problems, self.problems[:20]


def berth_gpu_ids(berth: BerthHandle, names: Iterable[str]) -> dict[str, str]:
    nodes = {n["name"]: n["gpuIdsUsed"] for n in berth.get("/debug/nodes")["nodes"]}
    return {n: nodes[n] for n in names}


def api_gpu_ids(api: kclient.CoreV1Api, names: Iterable[str]) -> dict[str, str]:
    used: dict[str, set[int]] = {n: set() for n in names}
    for p in api.list_pod_for_all_namespaces().items:
        raw = (p.metadata.annotations or {}).get(GPU_IDS)
        if p.spec.node_name in used and raw and p.status.phase not in ("Succeeded", "Failed"):
            used[p.spec.node_name] |= {int(i) for i in raw.split(",")}
    return {n: ",".join(str(i) for i in sorted(ids)) for n, ids in used.items()}


def assert_cache_matches(berth: BerthHandle, api: kclient.CoreV1Api, group: str, timeout: float = 20) -> None:
    """Berth's free cpu/memory/GPUs and held GPU indices per node equal a fresh list of the API server."""
    names = sorted(n.metadata.name for n in api.list_node(label_selector=f"e2e-group={group}").items)
    assert names, f"no nodes in group {group}"

    def views() -> tuple[Any, Any]:
        return (
            (_berth_view(berth, names), berth_gpu_ids(berth, names)),
            (_api_view(api, group), api_gpu_ids(api, names)),
        )

    deadline = time.monotonic() + timeout
    while True:
        got, want = views()
        if got == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Berth's cache differs from a fresh list after {timeout}s:\nberth: {got}\napi:   {want}"
            )
        time.sleep(0.2)


# -- processes and logs ------------------------------------------------------------------------------------
def log_lines(proc: h.Proc) -> list[str]:
    try:
        return proc.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def berth_log(proc: h.Proc) -> list[dict[str, Any]]:
    """Berth's JSON log lines (other lines skipped)."""
    out = []
    for line in log_lines(proc):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def watch_expired(cp: h.ControlPlane, path: str, resource_version: str, field_selector: str = "") -> bool:
    """Whether the API server answers a watch of `path` from `resource_version` with 410 Gone (an HTTP 410 or
    an ERROR event with code 410): the history after that version is no longer available."""
    query = urllib.parse.urlencode(
        {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": "1",
            **({"fieldSelector": field_selector} if field_selector else {}),
        }
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"{cp.url}{path}?{query}", headers={"Authorization": f"Bearer {cp.ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            line = r.readline()
    except urllib.error.HTTPError as exc:
        return exc.code == 410
    if not line.strip():
        return False
    event = json.loads(line)
    return bool(event.get("type") == "ERROR" and event.get("object", {}).get("code") == 410)


# -- mTLS --------------------------------------------------------------------------------------------------
@dataclass
class Certs:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"


def make_certs(directory: Path) -> Certs:
    """A CA, Berth's serving pair and kube-scheduler's client pair, made by scripts/make-certs.sh."""
    subprocess.run(["bash", str(MAKE_CERTS), str(directory)], check=True, capture_output=True, timeout=60)
    certs = Certs(directory)
    for f in (certs.ca, certs.server_cert, certs.server_key, certs.client_cert, certs.client_key):
        assert f.is_file(), f"make-certs.sh did not make {f}"
    return certs


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies Berth's certificate (hostname 127.0.0.1 is in its SAN)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def https_post(url: str, ctx: ssl.SSLContext, body: bytes = b"{}", timeout: float = 10) -> int | BaseException:
    """POST over HTTPS: the HTTP status, or the exception when no HTTP reply came (a refused handshake)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except urllib.error.URLError as exc:
        return exc.reason if isinstance(exc.reason, BaseException) else exc
    except (OSError, http.client.HTTPException) as exc:
        return exc


def tls12_handshake(port: int, ctx: ssl.SSLContext, timeout: float = 10) -> BaseException | None:
    """A bare TLS 1.2 handshake with 127.0.0.1:port: None when it completes, else the error. In TLS 1.2 the
    server checks the client's certificate inside the handshake (in TLS 1.3 the client already considers it
    done and learns of the refusal on its first read), so this shows where a refusal happens."""
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.do_handshake()
            return None
    except (ssl.SSLError, OSError) as exc:
        return exc


@dataclass
class TlsBerth(BerthHandle):
    """Berth in TLS mode: verbs and /debug over mTLS on tls_port; /healthz, /readyz, /metrics stay on the
    plain port (self.url), which is what readiness and metric() use."""

    tls_port: int = 0
    certs: Certs | None = None

    def __post_init__(self) -> None:
        assert self.certs is not None
        self.tls_port = self.tls_port or h.free_port()
        self.extra = [
            *self.extra,
            "--tls-port",
            str(self.tls_port),
            "--tls-cert",
            str(self.certs.server_cert),
            "--tls-key",
            str(self.certs.server_key),
            "--client-ca",
            str(self.certs.ca),
        ]

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def get(self, path: str) -> Any:
        assert self.certs is not None
        ctx = client_context(self.certs.ca, self.certs.client_cert, self.certs.client_key)
        with urllib.request.urlopen(self.https_url + path, context=ctx, timeout=10) as r:
            return orjson.loads(r.read())
