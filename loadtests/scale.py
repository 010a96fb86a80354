#!/usr/bin/env python3
"""Memory and initial-sync time of a Berth process at scale (default 7,500 nodes, 150,000 pods).

Berth is started as its own process (`python -m scheduler serve`, through a tiny boot snippet that only
adds a SIGUSR1 = gc.collect() handler, and a profiler in profiling copies) and fed through its real list/watch
code path (scheduler/informer.py -> KubeClient -> orjson -> ClusterState):

- nodes, namespaces and TeamQuotas always come from a real kube-apiserver on loopback
  (tests/e2e/harness.py), created there first;
- pods come from
  `--pods-from replay` (default): a replay server on loopback that answers `GET /api/v1/pods?limit=500&
  continue=...` with pages of realistic pod JSON (~4.6 KB per pod, as the API server returns a running
  Deployment pod: managedFields, probes, projected token volume, container statuses...), gzip-encoded
  like the API server's (level 1, bodies >= 128 KiB, when the client accepts gzip), and an empty watch;
  every other request is proxied to the real API server. Berth's kubeconfig points at the replay server.
  `--pods-from apiserver`: the pods are created in the real API server (bound via spec.nodeName, no
  scheduler needed) and Berth talks to the API server directly.

Measured: wall time from Berth's process start to `/readyz` 200; VmRSS (and VmHWM, the peak) from
/proc/<pid>/status right after that, and again after a gc settle (SIGUSR1 -> gc.collect(), then a few
seconds idle); `/debug/state` counts prove what is held. Targets: <= 300 MB RSS, <= 15 s sync.

Profiling (`--profile`): `python -X importtime` of Berth's imports; the cost of one informer event of each
kind against the full ClusterState (in this process); then two copies of the Berth process started by the
boot snippet with env BERTH_SCALE_PROFILE=cprofile or =tracemalloc (read by the snippet only, nothing in
scheduler/), each reporting where the time or the memory went up to /readyz, and the time the cyclic
garbage collector took (gc.callbacks). `--ab` also starts Berth with the informer's page prefetch and/or its
GC pause taken out again (BERTH_SCALE_UNDO, boot snippet only), interleaved, for before/after numbers.
`--probe-list` times raw pod lists from kube-apiserver by style (page size, gzip, watch-list).

    python -m loadtests.scale                                   # 7,500 nodes, 150,000 replayed pods
    python -m loadtests.scale --repeat 2 --ab --profile --markdown /tmp/scale.md
    python -m loadtests.scale --pods-from apiserver --ab --probe-list   # 150,000 pods in kube-apiserver (~3 min)
    python -m loadtests.scale --nodes 500 --pods 10000 --profile        # quick
"""

import argparse
import asyncio
import base64
import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
import yaml  # noqa: E402
from aiohttp import web  # noqa: E402

from scheduler.cluster import objects  # noqa: E402
from tests.fakes.ports import free_port  # noqa: E402

TARGET_RSS_MB = 300
TARGET_SYNC_S = 15
GZIP_MIN = 128 * 1024  # the API server compresses responses from this size (level 1)
LIST_RV = "9000000"
TEAMS = 10
NAMESPACES = 50
BOUND = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"  # Berth's pod informer selector

# Runs Berth exactly as `python -m scheduler serve ...`, plus: SIGUSR1 runs gc.collect() (the "gc settle").
# Profiling copies only (BERTH_SCALE_PROFILE=cprofile|tracemalloc, BERTH_SCALE_OUT=<file>): the profiler runs
# from the start, collector pauses are timed, and SIGUSR2 writes the report to <file> (then <file>.done).
# A/B copies only (BERTH_SCALE_UNDO=prefetch,gc-pause): the informer's list without those two changes.
BOOT = r"""
import gc, os, signal, sys, time
mode, out = os.environ.get("BERTH_SCALE_PROFILE"), os.environ.get("BERTH_SCALE_OUT")
if mode and out:
    gcs = {"n": [0, 0, 0], "s": [0.0, 0.0, 0.0], "t0": 0.0}
    def on_gc(phase, info):
        if phase == "start":
            gcs["t0"] = time.perf_counter()
        else:
            gcs["n"][info["generation"]] += 1
            gcs["s"][info["generation"]] += time.perf_counter() - gcs["t0"]
    gc.callbacks.append(on_gc)
    if mode == "tracemalloc":
        import tracemalloc
        tracemalloc.start(int(os.environ.get("BERTH_SCALE_FRAMES", "1")))
    else:
        import cProfile, pstats
        prof = cProfile.Profile()
        prof.enable()
    def dump(*_):
        with open(out, "w") as f:
            f.write("cyclic GC: " + ", ".join(f"gen{g} {gcs['n'][g]}x {gcs['s'][g]:.2f}s" for g in range(3)) + "\n")
            if mode == "tracemalloc":
                snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
                now, peak = tracemalloc.get_traced_memory()
                f.write(f"traced now {now / 2**20:.1f} MiB, traced peak {peak / 2**20:.1f} MiB\n")
                for key in ("lineno", "filename"):
                    f.write(f"-- top by {key}\n")
                    for st in snap.statistics(key)[:20]:
                        f.write(f"{st.size / 2**20:8.1f} MiB {st.count:9d} blocks  {st.traceback}\n")
            else:
                prof.disable()
                for key in ("tottime", "cumulative"):
                    f.write(f"-- top by {key}\n")
                    pstats.Stats(prof, stream=f).sort_stats(key).print_stats(22)
        open(out + ".done", "w").close()
    signal.signal(signal.SIGUSR2, dump)
undo = os.environ.get("BERTH_SCALE_UNDO", "")  # A/B runs: put back the informer's list as it was
if undo:
    import contextlib
    from scheduler.cluster import informer as inf
    if "gc-pause" in undo:
        inf._GcPause.during = staticmethod(contextlib.nullcontext)
    if "prefetch" in undo:
        async def sequential(self, seen):
            cont = ""
            while True:
                try:
                    page = await self._fetch(cont)
                except inf.KubeError as exc:
                    if exc.status != 410:
                        raise
                    seen.clear()
                    cont = ""
                    continue
                meta = page.get("metadata") or {}
                cont = meta.get("continue") or ""
                if not cont:
                    self.rv = meta.get("resourceVersion") or ""
                yield page
                if not cont:
                    return
        inf.Informer._pages = sequential
signal.signal(signal.SIGUSR1, lambda *_: gc.collect())
from scheduler.cli import main
sys.exit(main(sys.argv[1:]))
"""


# -- objects ------------------------------------------------------------------------------------------------
def gpu_node(i: int, gpu_every: int) -> bool:
    return bool(gpu_every) and i % gpu_every == 0


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def node_object(i: int, gpu_every: int = 4) -> dict[str, Any]:
    """A Node as a cloud kubelet reports it (~3 KB): labels, addresses, nodeInfo, a dozen images."""
    name, gpus = node_name(i), 8 if gpu_node(i, gpu_every) else 0
    zone = f"us-east-1{'abc'[i % 3]}"
    alloc = {
        "cpu": "95500m" if gpus else "63500m",
        "memory": "1031093672Ki" if gpus else "257698788Ki",
        "ephemeral-storage": "431110138368",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "pods": "110",
    }
    cap = {**alloc, "cpu": "96" if gpus else "64", "ephemeral-storage": "467784684Ki"}
    labels = {
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "p4d.24xlarge" if gpus else "m6i.16xlarge",
        "topology.kubernetes.io/region": "us-east-1",
        "topology.kubernetes.io/zone": zone,
        "eks.amazonaws.com/nodegroup": "gpu" if gpus else "general",
    }
    if gpus:
        alloc["nvidia.com/gpu"] = cap["nvidia.com/gpu"] = str(gpus)
        labels.update({"nvidia.com/gpu.memory": "81920", "nvidia.com/mig.strategy": "none"})
    ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
    stamp = "2026-11-20T08:00:00Z"
    annotations = {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "csi.volume.kubernetes.io/nodeid": orjson.dumps({"ebs.csi.aws.com": f"i-{i:017x}"}).decode(),
    }
    conditions = [
        {
            "type": t,
            "status": "False",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
            "reason": f"KubeletHasNo{t}",
            "message": f"kubelet has no {t}",
        }
        for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "True",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
        }
    )
    status = {
        "addresses": [
            {"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": name},
            {"type": "InternalDNS", "address": f"ip-{ip.replace('.', '-')}.ec2.internal"},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": f"{i:032x}",
            "systemUUID": f"ec2{i:029x}",
            "bootID": f"{i:08x}-b00t",
            "kernelVersion": "6.1.112-124.190.amzn2023.x86_64",
            "osImage": "Amazon Linux 2023",
            "containerRuntimeVersion": "containerd://1.7.22",
            "kubeletVersion": "v1.36.3",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "images": [
            {
                "names": [
                    f"registry.example.com/team/app-{k}@sha256:{k:064x}",
                    f"registry.example.com/team/app-{k}:v1.{k}.0",
                ],
                "sizeBytes": 10_000_000 * (k + 1),
            }
            for k in range(12)
        ],
    }
    spec = {"podCIDR": f"100.{i // 256 % 256}.{i % 256}.0/24", "providerID": f"aws:///{zone}/i-{i:017x}"}
    return objects.node(
        name,
        alloc,
        capacity=cap,
        pool="shared",
        gpu_model="NVIDIA-A100-SXM4-80GB",
        labels=labels,
        annotations=annotations,
        conditions=conditions,
        spec=spec,
        status=status,
    )


def namespace_name(k: int) -> str:
    return f"team-{k % TEAMS}-ns-{k // TEAMS}"


def namespace_object(k: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace_name(k), "labels": {"berth.dev/team": f"team-{k % TEAMS}"}},
    }


def teamquota_object(t: int) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TeamQuota",
        "metadata": {"name": f"team-{t}"},
        "spec": {
            "namespaceSelector": {"matchLabels": {"berth.dev/team": f"team-{t}"}},
            "cohort": "all",
            "resources": {
                "nvidia.com/gpu": {"guaranteed": 2000, "max": 4000},
                "cpu": {"guaranteed": "20000", "max": "40000"},
            },
        },
    }


def _fields_spec() -> dict[str, Any]:
    c: dict[str, Any] = {
        ".": {},
        "f:image": {},
        "f:imagePullPolicy": {},
        "f:name": {},
        "f:env": {},
        "f:ports": {},
        "f:livenessProbe": {},
        "f:readinessProbe": {},
        "f:resources": {".": {}, "f:limits": {}, "f:requests": {}},
        "f:terminationMessagePath": {},
        "f:terminationMessagePolicy": {},
        "f:volumeMounts": {},
    }
    return {
        "f:metadata": {
            "f:generateName": {},
            "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
            "f:ownerReferences": {".": {}, 'k:{"uid":"0"}': {}},
        },
        "f:spec": {
            "f:containers": {'k:{"name":"app"}': c},
            "f:dnsPolicy": {},
            "f:enableServiceLinks": {},
            "f:restartPolicy": {},
            "f:schedulerName": {},
            "f:securityContext": {},
            "f:terminationGracePeriodSeconds": {},
        },
    }


FIELDS_SPEC = _fields_spec()
FIELDS_STATUS: dict[str, Any] = {
    "f:status": {
        "f:conditions": {'k:{"type":"Ready"}': {".": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}},
        "f:containerStatuses": {},
        "f:hostIP": {},
        "f:hostIPs": {},
        "f:phase": {},
        "f:podIP": {},
        "f:podIPs": {".": {}, 'k:{"ip":"0"}': {".": {}, "f:ip": {}}},
        "f:startTime": {},
    }
}


def _pod_spec(gpus: int, cpu: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A Deployment pod's container and the rest of its spec (what the factory does not fill in)."""
    res: dict[str, Any] = {"requests": {"cpu": cpu, "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    if gpus:
        res["limits"]["nvidia.com/gpu"] = str(gpus)
        res["requests"]["nvidia.com/gpu"] = str(gpus)
    probe = {
        "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
        "initialDelaySeconds": 10,
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    app = objects.container(
        "app",
        "registry.example.com/team/app:v1.42.0",
        res,
        ports=[{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        env=[
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        ],
        livenessProbe=probe,
        readinessProbe=probe,
        volumeMounts=[
            {
                "name": "kube-api-access-x7k2p",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        ],
        terminationMessagePath="/dev/termination-log",
        terminationMessagePolicy="File",
        imagePullPolicy="IfNotPresent",
    )
    spec = {
        "volumes": [
            {
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ],
                    "defaultMode": 420,
                },
            }
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "tolerations": [
            {"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            for k in ("not-ready", "unreachable")
        ],
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    return [app], spec


def _pod_status(i: int, node_ip: str) -> dict[str, Any]:
    t = "2026-11-20T09:00:00Z"
    ip = f"100.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    return {
        "phase": "Running",
        "conditions": [
            {"type": c, "status": "True", "lastProbeTime": None, "lastTransitionTime": t}
            for c in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
        ],
        "hostIP": node_ip,
        "hostIPs": [{"ip": node_ip}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": t,
        "containerStatuses": [
            {
                "name": "app",
                "state": {"running": {"startedAt": t}},
                "lastState": {},
                "ready": True,
                "restartCount": 0,
                "image": "registry.example.com/team/app:v1.42.0",
                "imageID": f"registry.example.com/team/app@sha256:{i:064x}",
                "containerID": f"containerd://{i * 7919:064x}",
                "started": True,
            }
        ],
        "qosClass": "Burstable",
    }


def pod_object(i: int, nodes: int, gpu_every: int = 4, server_fields: bool = True) -> dict[str, Any]:
    """Pod i of a steady cluster: round-robin over the nodes; on a GPU node its first 8 pods hold one
    GPU each (with Berth's gpu-ids annotation). server_fields=False: what a client may POST."""
    n = i % nodes
    slot_on_node = i // nodes
    gpus = 1 if gpu_node(n, gpu_every) and slot_on_node < 8 else 0
    ns = namespace_name(i % NAMESPACES)
    app = f"svc-{i % 997}"
    rs = f"{app}-{(i % 997) * 2654435761 % 16**10:010x}"
    name = f"{rs}-{i:06x}"
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "kubectl.kubernetes.io/restartedAt": "2026-11-19T12:00:00Z",
    }
    if gpus:
        annotations["berth.dev/gpu-ids"] = str(slot_on_node)
    meta: dict[str, Any] = {
        "generateName": f"{rs}-",
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs,
                "uid": f"{i % 997:08x}-0000-4000-8000-{i % 997:012x}",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    status = None
    if server_fields:
        meta.update(
            {
                "uid": f"{i:08x}-1111-4000-8000-{i:012x}",
                "resourceVersion": str(100000 + i),
                "creationTimestamp": "2026-11-20T08:59:58Z",
                "managedFields": [
                    {
                        "manager": "kube-controller-manager",
                        "operation": "Update",
                        "apiVersion": "v1",
                        "time": "2026-11-20T08:59:58Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": FIELDS_SPEC,
                    },
                    {
                        "manager": "kubelet",
                        "operation": "Update",
                        "apiVersion": "v1",
                        "time": "2026-11-20T09:00:03Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": FIELDS_STATUS,
                        "subresource": "status",
                    },
                ],
            }
        )
        status = _pod_status(i, f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    containers, spec = _pod_spec(gpus, "2" if gpus else ("500m", "250m", "1")[i % 3])
    labels = {"app": app, "pod-template-hash": rs[-10:], "app.kubernetes.io/part-of": "platform"}
    return objects.pod(
        name,
        containers,
        namespace=ns,
        node_name=node_name(n),
        priority=0,
        labels=labels,
        annotations=annotations,
        metadata=meta,
        spec=spec,
        status=status,
    )


# -- the replay server ----------------------------------------------------------------------------------------
class ReplayServer:
    """Serves recorded list pages of some resources (paginated, gzip like the API server) with an empty
    watch; proxies every other request to `upstream` (the real API server) when given, else 404."""

    def __init__(
        self,
        lists: dict[str, list[bytes]],
        kinds: dict[str, str] | None = None,
        upstream: str | None = None,
        compress: bool = True,
    ) -> None:
        self.lists = lists
        self.kinds = kinds or {}
        self.upstream = upstream.rstrip("/") if upstream else None
        self.compress = compress
        self.pages_served = 0
        self.pages_by_path: dict[str, int] = {}
        self.watches = 0
        self.proxied = 0
        self._cache: dict[tuple[str, int, int, bool], bytes] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> "ReplayServer":
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self.port = port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        if self.upstream:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, connector=aiohttp.TCPConnector(ssl=False, limit=32)
            )
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    def prepare(self, limit: int = 500) -> None:
        """Build (and compress) every page a `limit`-sized list will ask for, before the clock starts."""
        for path, items in self.lists.items():
            for start in range(0, max(len(items), 1), limit):
                for gz in (True, False) if self.compress else (False,):
                    self._page(path, start, limit, gz)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path in self.lists:
            if request.query.get("watch") in ("1", "true"):
                return await self._watch(request)
            return self._list(request)
        if self.upstream:
            return await self._proxy(request)
        return web.json_response({"kind": "Status", "code": 404, "message": f"{request.path} not replayed"}, status=404)

    def _list(self, request: web.Request) -> web.Response:
        items = self.lists[request.path]
        limit = int(request.query.get("limit") or 0) or len(items) or 1
        start = _decode_continue(request.query.get("continue", ""))
        gz = self.compress and "gzip" in request.headers.get("Accept-Encoding", "")
        body = self._page(request.path, start, limit, gz)
        self.pages_served += 1
        self.pages_by_path[request.path] = self.pages_by_path.get(request.path, 0) + 1
        headers = {"Content-Type": "application/json"}
        if body[:2] == b"\x1f\x8b":
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    def _page(self, path: str, start: int, limit: int, gz: bool) -> bytes:
        key = (path, start, limit, gz)
        if key not in self._cache:
            items = self.lists[path]
            end = min(start + limit, len(items))
            meta: dict[str, Any] = {"resourceVersion": LIST_RV}
            if end < len(items):
                meta["continue"] = _encode_continue(path, end)
                meta["remainingItemCount"] = len(items) - end
            kind = self.kinds.get(path, "List")
            body = (
                b'{"kind":"'
                + kind.encode()
                + b'","apiVersion":"v1","metadata":'
                + orjson.dumps(meta)
                + b',"items":['
                + b",".join(items[start:end])
                + b"]}"
            )
            if gz and len(body) >= GZIP_MIN:
                body = gzip.compress(body, compresslevel=1)
            self._cache[key] = body
        return self._cache[key]

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        """An empty watch: headers, then nothing until timeoutSeconds (or the server stops)."""
        self.watches += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await asyncio.sleep(float(request.query.get("timeoutSeconds") or 300))
        return resp

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None and self.upstream is not None
        self.proxied += 1
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "accept", "content-type", "accept-encoding", "user-agent")
        }
        body = await request.read() if request.can_read_body else None
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body, timeout=timeout
        ) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() in ("content-type", "content-encoding")}
            resp = web.StreamResponse(status=up.status, headers=out)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientPayloadError):
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
            return resp


def _encode_continue(path: str, offset: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"path": path, "start": offset})).decode()


def _decode_continue(token: str) -> int:
    if not token:
        return 0
    return int(orjson.loads(base64.urlsafe_b64decode(token.encode()))["start"])


def dumps_all(objs: Iterable[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(o) for o in objs]


def pod_items(count: int, nodes: int, gpu_every: int) -> list[bytes]:
    return [orjson.dumps(pod_object(i, nodes, gpu_every)) for i in range(count)]


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    cluster: dict[str, Any] = {"server": server}
    if server.startswith("https"):
        cluster["insecure-skip-tls-verify"] = True
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def kubeconfig_token(path: Path) -> str:
    return yaml.safe_load(path.read_text())["users"][0]["user"]["token"]


# -- a Berth process and what it holds ------------------------------------------------------------------------
@dataclass
class Sync:
    variant: str = "as is"
    run: int = 1
    seconds: float = 0.0  # process start -> /readyz 200
    cpu_seconds: float = 0.0  # Berth's own CPU (user + system) up to then
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    settled_rss_mb: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)
    listed: dict[str, float] = field(default_factory=dict)  # resource -> seconds from start, from Berth's log
    others_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the servers during the sync


def berth_command(kubeconfig: Path, port: int) -> list[str]:
    return [sys.executable, "-c", BOOT, "serve", "--kubeconfig", str(kubeconfig), "--port", str(port)]


def vm_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BerthProcess:
    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.kubeconfig = kubeconfig
        self.log = log
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.started_wall = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "BerthProcess":
        out = open(self.log, "wb")  # noqa: SIM115 - lives as long as the process
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            berth_command(self.kubeconfig, self.port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(self.env or {})},
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    async def get(self, path: str) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s, s.get(self.url + path, timeout=aiohttp.ClientTimeout(total=30)) as r:
            return r.status, await r.read()

    async def wait_ready(self, timeout: float, every: float = 0.05) -> float:
        """Seconds from process start to the first /readyz 200."""
        deadline = self.started + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.popen is not None and self.popen.poll() is not None:
                    raise RuntimeError(f"Berth exited ({self.popen.returncode}):\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return time.monotonic() - self.started
                await asyncio.sleep(every)
        raise TimeoutError(f"Berth not ready after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def listed_at(self) -> dict[str, float]:
        """resource -> seconds from process start at which Berth logged its initial list as done."""
        out: dict[str, float] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError):
                rec = orjson.loads(line)
                if rec.get("logger") == "berth.informer" and " listed " in rec["msg"]:
                    ts = time.mktime(time.strptime(rec["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
                    ts += int(rec["ts"][20:23]) / 1000
                    out.setdefault(rec["msg"].split(":")[0], round(ts - self.started_wall, 2))
        return out


async def measure_sync(
    kubeconfig: Path,
    log: Path,
    timeout: float = 300,
    settle: float = 3.0,
    others: dict[str, int] | None = None,
    variant: tuple[str, dict[str, str]] = ("as is", {}),
) -> Sync:
    """Start Berth, wait for /readyz 200, read its memory. `others`: name -> pid of servers whose CPU
    seconds during the sync are recorded too."""
    before = {name: cpu_seconds(pid) for name, pid in (others or {}).items()}
    berth = BerthProcess(kubeconfig, log, variant[1]).start()
    try:
        res = Sync(variant[0])
        res.seconds = await berth.wait_ready(timeout)
        res.cpu_seconds = cpu_seconds(berth.pid)
        res.others_cpu = {name: cpu_seconds((others or {})[name]) - t for name, t in before.items()}
        vm = vm_status(berth.pid)
        res.rss_mb, res.hwm_mb = vm["VmRSS"], vm["VmHWM"]
        res.state = orjson.loads((await berth.get("/debug/state"))[1])
        os.kill(berth.pid, signal.SIGUSR1)  # gc.collect() in Berth, then let it idle
        await asyncio.sleep(settle)
        res.settled_rss_mb = vm_status(berth.pid)["VmRSS"]
        res.hwm_mb = vm_status(berth.pid)["VmHWM"]
        res.listed = berth.listed_at()
        return res
    finally:
        berth.stop()


# -- profiling ------------------------------------------------------------------------------------------------
def import_time() -> str:
    """Cumulative import time of what `berth serve` imports, biggest top-level modules first
    (python -X importtime; one cold-ish run, so only the order of magnitude counts)."""
    code = (
        "import scheduler.cli, scheduler.app, scheduler.cluster.informer, scheduler.cluster.kube, "
        "scheduler.cluster.status, scheduler.extender.server"
    )
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    cum_by_package: dict[str, int] = {}
    total = 0
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cum, name = line.split(":", 1)[1].split("|")
        if not name.startswith("  "):
            total += int(cum)  # imported at top level: the cumulative times add up
        package = name.strip().split(".")[0]
        if package != "scheduler":  # a package's outermost import carries its whole cost
            cum_by_package[package] = max(cum_by_package.get(package, 0), int(cum))
    top = sorted(cum_by_package.items(), key=lambda kv: -kv[1])[:8]
    return (
        f"all imports {total / 1e3:.0f} ms; biggest packages (cumulative, nested ones counted in their "
        f"importer too): " + ", ".join(f"{n} {c / 1e3:.0f} ms" for n, c in top)
    )


async def profiled_copy(kubeconfig: Path, log: Path, mode: str, timeout: float = 900) -> str:
    """A copy of the Berth process with a profiler on from the start (`cprofile` or `tracemalloc`); the
    report is taken as soon as /readyz turns 200 (so it covers imports, startup and the initial lists)."""
    out = log.with_suffix(f".{mode}.txt")
    berth = BerthProcess(kubeconfig, log, {"BERTH_SCALE_PROFILE": mode, "BERTH_SCALE_OUT": str(out)}).start()
    try:
        took = await berth.wait_ready(timeout)
        rss = vm_status(berth.pid)["VmRSS"]
        os.kill(berth.pid, signal.SIGUSR2)
        done = Path(f"{out}.done")
        for _ in range(600):
            if done.exists():
                break
            await asyncio.sleep(0.1)
        return f"sync under {mode}: {took:.1f}s, VmRSS {rss:.0f} MB\n" + _trim_pstats(out.read_text())
    finally:
        berth.stop()


def event_costs(nodes: int, pods: int, gpu_every: int) -> str:
    """In this process: a ClusterState holding the whole cluster, then the time one informer event of each
    kind takes on the event loop (every handler of Berth waits behind it)."""
    from scheduler.cluster.state import ClusterState
    from scheduler.config import Config

    state = ClusterState(Config())
    for k in range(NAMESPACES):
        state.apply_namespace("ADDED", namespace_object(k))
    for t in range(TEAMS):
        state.apply_team("ADDED", teamquota_object(t))
    for i in range(nodes):
        state.apply_node("ADDED", node_object(i, gpu_every))
    for i in range(pods):
        state.apply_pod("ADDED", pod_object(i, nodes, gpu_every))
    extra = pod_object(pods, nodes, gpu_every)
    extra["metadata"]["name"] += "-x"
    new_ns = {"metadata": {"name": "brand-new", "labels": {"berth.dev/team": "none"}}}
    events = [
        ("pod ADDED", lambda: state.apply_pod("ADDED", extra)),
        ("pod DELETED", lambda: state.apply_pod("DELETED", extra)),
        ("node MODIFIED (20 pods on it)", lambda: state.apply_node("MODIFIED", node_object(1, gpu_every))),
        ("namespace ADDED (no team)", lambda: state.apply_namespace("ADDED", new_ns)),
        ("namespace MODIFIED (same labels)", lambda: state.apply_namespace("MODIFIED", namespace_object(0))),
        ("TeamQuota MODIFIED (same spec)", lambda: state.apply_team("MODIFIED", teamquota_object(0))),
    ]
    rows = [f"ClusterState with {len(state.table)} nodes, {len(state.ledger)} pods, {len(state.quotas.teams)} teams:"]
    for name, fn in events:
        t0 = time.perf_counter()
        fn()
        rows.append(f"  {name:34s} {1e3 * (time.perf_counter() - t0):8.2f} ms")
    return "\n".join(rows)


LIST_PROBES = [  # (what, query, gzip, watch-list)
    (
        "paginated, limit=500, Berth's field selector, gzip (what Berth does)",
        {"limit": "500", "fieldSelector": BOUND},
        True,
        False,
    ),
    ("paginated, limit=500, Berth's field selector, no gzip", {"limit": "500", "fieldSelector": BOUND}, False, False),
    ("paginated, limit=500, no field selector, gzip", {"limit": "500"}, True, False),
    ("paginated, limit=5000, Berth's field selector, gzip", {"limit": "5000", "fieldSelector": BOUND}, True, False),
    ("watch-list (sendInitialEvents=true), Berth's field selector", {"fieldSelector": BOUND}, True, True),
]


async def probe_lists(url: str, token: str, apiserver_pid: int) -> str:
    """How long kube-apiserver takes to hand over every pod, and its CPU for it, by list style. The client
    reads raw bytes (no JSON parse), so the wall time is the server's."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    rows = ["| list style | wall s | kube-apiserver CPU s | MB received |", "|---|---:|---:|---:|"]
    async with aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        for what, query, gz, stream in LIST_PROBES:
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Accept-Encoding": "gzip" if gz else "identity",
            }
            cpu0, t0 = cpu_seconds(apiserver_pid), time.monotonic()
            fetch = _watch_list if stream else _paginated_list
            size = await fetch(session, url, query, headers)
            rows.append(
                f"| {what} | {time.monotonic() - t0:.1f} | {cpu_seconds(apiserver_pid) - cpu0:.1f} | {size / 1e6:.0f} |"
            )
    return "\n".join(rows)


async def _paginated_list(
    session: aiohttp.ClientSession, url: str, query: dict[str, str], headers: dict[str, str]
) -> int:
    size, cont = 0, ""
    while True:
        params = query | ({"continue": cont} if cont else {})
        async with session.get(f"{url}/api/v1/pods", params=params, headers=headers) as r:
            body = await r.read()
            size += len(body)
            head = body[:8192]
            if r.headers.get("Content-Encoding") == "gzip":
                head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, 8192)
        meta = head.split(b'"metadata":', 1)[1].split(b"}", 1)[0] + b"}"
        cont = orjson.loads(meta).get("continue") or ""
        if not cont:
            return size


async def _watch_list(session: aiohttp.ClientSession, url: str, query: dict[str, str], headers: dict[str, str]) -> int:
    params = query | {
        "watch": "1",
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
    }
    size, tail = 0, b""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with session.get(f"{url}/api/v1/pods", params=params, headers=headers, timeout=timeout) as r:
        gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if r.headers.get("Content-Encoding") == "gzip" else None
        async for chunk in r.content.iter_any():
            size += len(chunk)
            text = gunzip.decompress(chunk) if gunzip else chunk
            if b"initial-events-end" in tail[-64:] + text:  # the bookmark that ends the initial state
                return size
            tail = text[-64:]
    raise RuntimeError("the watch-list ended before its initial-events-end bookmark")


def _trim_pstats(text: str) -> str:
    keep = []
    for line in text.splitlines():
        noise = line.lstrip().startswith(("Ordered by", "List reduced")) or " function calls" in line
        if line.strip() and not noise:
            keep.append(line.replace(str(ROOT) + "/", "").replace(sys.prefix + "/lib/python3.11/site-packages/", ""))
    return "\n".join(keep)


# -- the run ---------------------------------------------------------------------------------------------------
def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def populate(cp: Any, api: Any, args: argparse.Namespace) -> None:
    """Nodes, namespaces and TeamQuotas in the real API server (and the pods, with --pods-from apiserver)."""
    t0 = time.monotonic()
    await api.create_all("/api/v1/nodes", dumps_all(node_object(i, args.gpu_every) for i in range(args.nodes)))
    say(f"{args.nodes} nodes created in {time.monotonic() - t0:.1f}s")
    await api.create_all("/api/v1/namespaces", dumps_all(namespace_object(k) for k in range(NAMESPACES)))
    await api.create_all("/apis/berth.dev/v1alpha1/teamquotas", dumps_all(teamquota_object(t) for t in range(TEAMS)))
    if args.pods_from != "apiserver":
        return
    t0 = time.monotonic()
    for start in range(0, args.pods, 10_000):
        posts = []
        for i in range(start, min(start + 10_000, args.pods)):
            p = pod_object(i, args.nodes, args.gpu_every, server_fields=False)
            posts.append((f"/api/v1/namespaces/{p['metadata']['namespace']}/pods", orjson.dumps(p)))
        await api.post_all(posts)
        done = start + len(posts)
        say(f"  {done} pods created in the API server ({done / (time.monotonic() - t0):.0f}/s)")


VARIANTS = [
    ("as is", {}),
    ("without prefetch", {"BERTH_SCALE_UNDO": "prefetch"}),
    ("without GC pause", {"BERTH_SCALE_UNDO": "gc-pause"}),
    ("without both (as before)", {"BERTH_SCALE_UNDO": "prefetch,gc-pause"}),
]


@dataclass
class Report:
    args: argparse.Namespace
    runs: list[Sync]
    replay: dict[str, int] = field(default_factory=dict)
    profile: dict[str, str] = field(default_factory=dict)


async def run(args: argparse.Namespace) -> Report:
    from loadtests.throughput import Api
    from tests.e2e import harness as h

    cp = h.ControlPlane(workload_api=False).start()  # the alpha gang API slows pod admission
    replay: ReplayServer | None = None
    try:
        berth_kc = cp.install_berth_identity()
        async with Api(cp.url, cp.ADMIN_TOKEN, args.concurrency) as api:
            await populate(cp, api, args)
        kubeconfig = berth_kc
        if args.pods_from == "replay":
            t0 = time.monotonic()
            replay = ReplayServer(
                {"/api/v1/pods": pod_items(args.pods, args.nodes, args.gpu_every)},
                {"/api/v1/pods": "PodList"},
                upstream=cp.url,
                compress=not args.no_gzip,
            )
            replay.prepare(500)
            await replay.start()
            say(
                f"replay server {replay.url}: {args.pods} pods ({_mb(replay.lists['/api/v1/pods'])} MB of JSON) "
                f"ready in {time.monotonic() - t0:.1f}s"
            )
            kubeconfig = write_kubeconfig(cp.dir / "berth-replay.kubeconfig", replay.url, kubeconfig_token(berth_kc))
        report = Report(args, [])
        others = _server_pids(cp) | ({"replay server": os.getpid()} if replay else {})
        for k in range(args.repeat):
            for v, variant in enumerate(VARIANTS if args.ab else VARIANTS[:1]):
                log = cp.dir / f"berth-scale-{k}-{v}.log"
                s = await measure_sync(kubeconfig, log, args.timeout, args.settle, others, variant)
                s.run = k + 1
                report.runs.append(s)
                say(
                    f"run {s.run} ({s.variant}): ready in {s.seconds:.2f}s, VmRSS {s.settled_rss_mb:.0f} MB "
                    f"(load average {os.getloadavg()[0]:.2f})"
                )
        if replay:
            n = len(report.runs)
            report.replay = {
                "pages": replay.pages_served // n,
                "watches": replay.watches // n,
                "proxied": replay.proxied // n,
            }
        if args.probe_list:
            say("probing kube-apiserver list styles ...")
            report.profile["kube-apiserver list styles"] = await probe_lists(
                cp.url, cp.ADMIN_TOKEN, _server_pids(cp)["kube-apiserver"]
            )
        if args.profile:
            report.profile.update(await profile(cp.dir, kubeconfig, args))
        return report
    finally:
        if replay:
            await replay.stop()
        cp.stop()
        if args.keep:
            say(f"logs kept in {cp.dir}")
        else:
            h.cleanup(cp.dir)


def _server_pids(cp: Any) -> dict[str, int]:
    procs = {"kube-apiserver": cp.apiserver, "etcd": cp.etcd}
    return {name: p.popen.pid for name, p in procs.items() if p is not None and p.popen is not None}


async def profile(work: Path, kubeconfig: Path, args: argparse.Namespace) -> dict[str, str]:
    out = {"imports": import_time()}
    say("profiling: informer event costs at full size, in this process ...")
    out["event costs"] = event_costs(args.nodes, args.pods, args.gpu_every)
    for mode in ("cprofile", "tracemalloc"):
        say(f"profiling: a {mode} copy of Berth ...")
        out[mode] = await profiled_copy(kubeconfig, work / f"berth-{mode}.log", mode)
    return out


def _mb(items: list[bytes]) -> int:
    return sum(map(len, items)) >> 20


# -- reporting -------------------------------------------------------------------------------------------------
def render(report: Report, argv: list[str]) -> str:
    a = report.args
    held = report.runs[-1].state
    lines = [
        "# Berth at scale: initial sync and memory",
        "",
        f"`python -m loadtests.scale {' '.join(argv)}`",
        "",
        *machine_facts(),
        "",
        f"{a.nodes} nodes (kube-apiserver; every {a.gpu_every}th with 8 GPUs), {NAMESPACES} namespaces, "
        f"{TEAMS} TeamQuotas (kube-apiserver); {a.pods} pods from "
        + (
            "the replay server (recorded list pages, gzip like the API server)."
            if a.pods_from == "replay"
            else "kube-apiserver."
        ),
        "",
        f"| run | informer list | start -> /readyz 200 (target <= {TARGET_SYNC_S} s) | CPU s until then | "
        f"VmRSS at ready | VmRSS after gc.collect() + {a.settle:.0f} s (target <= {TARGET_RSS_MB} MB) | VmHWM (peak) | "
        "initial list done at (s from start) |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
        *(
            f"| {s.run} | {s.variant} | {s.seconds:.2f} s | {_cpu(s)} | {s.rss_mb:.0f} MB | "
            f"{s.settled_rss_mb:.0f} MB | {s.hwm_mb:.0f} MB | "
            + ", ".join(f"{r} {t:.2f}" for r, t in s.listed.items())
            + " |"
            for s in report.runs
        ),
        "",
        f"`/debug/state` after sync: nodes {held.get('nodes')}, pods {held.get('pods')}, teams {held.get('teams')}, "
        f"ready {held.get('ready')}; informers "
        + ", ".join(f"{k}: lists {v['lists']} rv {v['resourceVersion']}" for k, v in held.get("informers", {}).items()),
    ]
    if report.replay:
        r = report.replay
        lines += [
            "",
            f"Replay server, per Berth start: {r['pages']} pod pages served, {r['watches']} watches, "
            f"{r['proxied']} requests proxied to kube-apiserver.",
        ]
    for name, text in report.profile.items():
        fence = [] if text.startswith("|") else ["```"]
        lines += ["", f"## {name}", "", *fence, text.rstrip(), *fence]
    return "\n".join(lines) + "\n"


def _cpu(s: Sync) -> str:
    return f"Berth {s.cpu_seconds:.1f}; " + ", ".join(f"{k} {v:.1f}" for k, v in s.others_cpu.items())


def machine_facts() -> list[str]:
    from loadtests.throughput import machine_facts as facts

    return facts()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtests/scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=7500, help="nodes created in kube-apiserver (default 7500)")
    p.add_argument("--pods", type=int, default=150_000, help="pods (default 150000)")
    p.add_argument(
        "--pods-from",
        choices=["replay", "apiserver"],
        default="replay",
        help="replay server (default) or pods created in kube-apiserver",
    )
    p.add_argument("--gpu-every", type=int, default=4, help="every Nth node has 8 GPUs")
    p.add_argument("--no-gzip", action="store_true", help="replay pages uncompressed (the API server gzips)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent POSTs when creating objects")
    p.add_argument("--settle", type=float, default=3.0, help="seconds idle after gc.collect() before the RSS read")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for /readyz")
    p.add_argument("--repeat", type=int, default=1, help="measure this many Berth starts (same data)")
    p.add_argument(
        "--ab",
        action="store_true",
        help="each start also without the informer's prefetch and/or GC "
        "pause (put back in the process by the boot snippet), interleaved",
    )
    p.add_argument(
        "--profile", action="store_true", help="also: import times, event costs, cProfile and tracemalloc copies"
    )
    p.add_argument(
        "--probe-list",
        action="store_true",
        help="also time raw pod lists from kube-apiserver by style (pages, gzip, watch-list)",
    )
    p.add_argument("--markdown", help="write the report here")
    p.add_argument("--keep", action="store_true", help="keep the control plane's directory (logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    report = asyncio.run(run(args))
    text = render(report, argv)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    held = report.runs[-1].state
    return 0 if held.get("nodes") == args.nodes and held.get("pods") == args.pods else 1


if __name__ == "__main__":
    sys.exit(main())
