"""The agent's loops: discover the GPUs, read the kubelet, write the two node annotations on change only.

Two rates, both bounded per node: the topology is read every `topology_seconds` (it changes when MIG is
reconfigured or a GPU falls off the bus), the kubelet every `poll_seconds`; a changed annotation is
written at most once per `min_write_seconds`, so a burst of pod starts on a node is one write
(docs/devices.md has the cluster-wide rate). Nothing here fails the process: a kubelet that restarts or
a node without GPUs is a state on /healthz and in the metrics, not a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol
from urllib.parse import quote

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from scheduler.agent.kubelet import PodResourcesClient, PodResourcesError, allocatable_gpus, assignments
from scheduler.gpu import discovery, nvml
from scheduler.gpu.assignments import Assignments
from scheduler.gpu.topology import TopologyError
from scheduler.model.names import ANN_GPU_ASSIGNED, ANN_GPU_TOPOLOGY
from scheduler.serving import guard

log = logging.getLogger("berth.agent")

_UUIDS = ("nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader")


@dataclass
class AgentConfig:
    node: str
    socket: str
    poll_seconds: float = 5.0
    topology_seconds: float = 300.0
    min_write_seconds: float = 5.0
    rpc_deadline_seconds: float = 10.0
    backoff_max_seconds: float = 60.0
    host: str = "127.0.0.1"
    port: int = 9402
    nvml_module: str = "pynvml"


class NodeWriter(Protocol):
    async def annotations(self, node: str) -> dict[str, str]: ...
    async def patch(self, node: str, annotations: dict[str, str]) -> None: ...


class KubeNodeWriter:
    """Node reads and merge patches of metadata.annotations (no resourceVersion: nothing to conflict)."""

    def __init__(self, client: Any, timeout: float = 10.0) -> None:
        self.client = client  # scheduler.cluster.kube.KubeClient
        self.timeout = timeout

    async def annotations(self, node: str) -> dict[str, str]:
        status, raw = await self.client.request("GET", f"/api/v1/nodes/{quote(node)}", timeout=self.timeout)
        if status != 200:
            raise OSError(f"GET node {node}: HTTP {status}: {raw[:200].decode(errors='replace')}")
        return dict((orjson.loads(raw).get("metadata") or {}).get("annotations") or {})

    async def patch(self, node: str, annotations: dict[str, str]) -> None:
        body = {"metadata": {"annotations": annotations}}
        status, raw = await self.client.request(
            "PATCH",
            f"/api/v1/nodes/{quote(node)}",
            body,
            content_type="application/merge-patch+json",
            timeout=self.timeout,
        )
        if status not in (200, 201):
            raise OSError(f"PATCH node {node}: HTTP {status}: {raw[:200].decode(errors='replace')}")


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.kubelet_up = Gauge(
            "berth_agent_podresources_up", "1 while the kubelet's PodResources API answers.", registry=r
        )
        self.kubelet_errors = Counter(
            "berth_agent_podresources_errors_total", "PodResources calls that failed, by RPC.", ["rpc"], registry=r
        )
        self.writes = Counter(
            "berth_agent_node_writes_total",
            "Node annotation writes, by annotation and result.",
            ["annotation", "result"],
            registry=r,
        )
        self.gpus = Gauge(
            "berth_agent_gpus", "GPUs discovered on the node (0: none, or no NVML and no nvidia-smi).", registry=r
        )
        self.source = Gauge(
            "berth_agent_discovery_source", "1 for the source of the last discovery.", ["source"], registry=r
        )
        self.pods = Gauge("berth_agent_reported_pods", "Pods with GPUs in the last report.", registry=r)
        self.unmapped = Counter(
            "berth_agent_unmapped_devices_total",
            "GPU device IDs the kubelet reported that name no GPU found here.",
            registry=r,
        )


@dataclass
class AgentState:
    inventory: nvml.Inventory | None = None
    discovery_error: str | None = None
    report: Assignments | None = None
    allocatable: dict[str, int] = field(default_factory=dict)
    kubelet_error: str | None = None
    published: dict[str, str] = field(default_factory=dict)  # what the Node holds, as far as we know
    last_tick: float = 0.0  # monotonic time a loop last finished a round


def discover(
    loader: Callable[[], ModuleType] = nvml.load, smi: Callable[[], str] | None = None
) -> nvml.Inventory | None:
    """NVML first; `nvidia-smi topo -m` when NVML is missing; None on a node without either (no GPUs)."""
    try:
        return nvml.discover(loader())
    except nvml.NvmlUnavailable as exc:
        log.info("NVML unavailable (%s); trying nvidia-smi", exc)
    try:
        topo = discovery.parse_nvidia_smi_topo(smi() if smi else discovery.read_nvidia_smi())
    except (discovery.NvidiaSmiError, TopologyError) as exc:
        log.info("no GPUs found: %s", exc)
        return None
    return nvml.Inventory(gpus=(), topology=topo, source="nvidia-smi", uuid_index=_smi_uuids(topo.gpu_count))


def _smi_uuids(count: int) -> dict[str, int]:
    """UUID -> index from nvidia-smi, so the fallback still maps the device plugin's IDs."""
    try:
        done = subprocess.run(_UUIDS, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {str(i): i for i in range(count)}
    out: dict[str, int] = {}
    for line in done.stdout.splitlines():
        index, _, uuid = (p.strip() for p in line.partition(","))
        if index.isdigit() and uuid:
            out[uuid] = int(index)
    return out


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        writer: NodeWriter,
        kubelet: PodResourcesClient,
        discoverer: Callable[[], nvml.Inventory | None] = discover,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.kubelet = kubelet
        self.discoverer = discoverer
        self.metrics = metrics or AgentMetrics()
        self.state = AgentState()
        self._last_write: dict[str, float] = {}

    async def run(self) -> None:
        await self._load_published()
        try:
            await self.topology_round()  # first: the kubelet's device IDs are mapped with its UUIDs
        except Exception:
            log.exception("first GPU discovery failed")
        await asyncio.gather(
            self._every(self.config.topology_seconds, self.topology_round),
            self._every(self.config.poll_seconds, self.kubelet_round),
        )

    async def _load_published(self) -> None:
        """What the Node already says (a restarted agent must not rewrite an unchanged annotation)."""
        try:
            current = await self.writer.annotations(self.config.node)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot read node %s (%s); will write on the first round", self.config.node, exc)
            return
        for key in (ANN_GPU_TOPOLOGY, ANN_GPU_ASSIGNED):
            if key in current:
                self.state.published[key] = current[key]

    async def _every(self, interval: float, round_: Callable[[], Awaitable[bool]]) -> None:
        """Run a round every `interval`; after failures, back off (doubling, up to backoff_max_seconds)."""
        delay = interval
        while True:
            ok = False
            try:
                ok = await round_()
            except Exception:  # a bug in one round must not stop the agent; the log and metrics show it
                log.exception("agent round failed")
            self.state.last_tick = time.monotonic()
            delay = interval if ok else min(max(delay, interval) * 2, self.config.backoff_max_seconds)
            await asyncio.sleep(delay)

    async def topology_round(self) -> bool:
        inventory = await asyncio.to_thread(self.discoverer)  # NVML and nvidia-smi block
        self.state.inventory = inventory
        for source in ("nvml", "nvidia-smi", "none"):
            self.metrics.source.labels(source).set(int(source == (inventory.source if inventory else "none")))
        if inventory is None:
            self.metrics.gpus.set(0)
            return True  # a node without GPUs: nothing to publish, nothing wrong
        self.metrics.gpus.set(inventory.topology.gpu_count)
        return await self._publish(ANN_GPU_TOPOLOGY, inventory.annotation())

    async def kubelet_round(self) -> bool:
        try:
            reply = await self.kubelet.list()
            alloc = await self.kubelet.allocatable()
        except PodResourcesError as exc:
            rpc = "GetAllocatableResources" if "GetAllocatable" in str(exc) else "List"
            self.metrics.kubelet_errors.labels(rpc).inc()
            self.metrics.kubelet_up.set(0)
            if self.state.kubelet_error != str(exc):
                log.warning("kubelet PodResources API: %s", exc)
            self.state.kubelet_error = str(exc)
            return False
        self.metrics.kubelet_up.set(1)
        self.state.kubelet_error = None
        self.state.allocatable = allocatable_gpus(alloc)
        uuid_index = self.state.inventory.uuid_index if self.state.inventory else {}
        report, unmapped = assignments(reply, uuid_index)
        if unmapped:
            self.metrics.unmapped.inc(len(unmapped))
            log.warning("device IDs that name no GPU found here: %s", ", ".join(sorted(set(unmapped))[:8]))
        self.state.report = report
        self.metrics.pods.set(len(report.pods))
        if not report.pods and not report.dra and ANN_GPU_ASSIGNED not in self.state.published:
            return True  # nothing held, nothing written before: a node without GPU pods stays quiet
        return await self._publish(ANN_GPU_ASSIGNED, report.to_annotation())

    async def _publish(self, key: str, value: str) -> bool:
        if self.state.published.get(key) == value:
            return True
        now = time.monotonic()
        if now - self._last_write.get(key, -1e9) < self.config.min_write_seconds:
            return True  # coalesce: the next round writes the latest snapshot
        self._last_write[key] = now
        try:
            await self.writer.patch(self.config.node, {key: value})
        except (OSError, TimeoutError) as exc:
            self.metrics.writes.labels(key, "error").inc()
            log.warning("writing %s on node %s failed: %s", key, self.config.node, exc)
            return False
        self.metrics.writes.labels(key, "ok").inc()
        self.state.published[key] = value
        log.info("node %s: %s written", self.config.node, key)
        return True

    # -- HTTP: health, metrics, what the agent knows ---------------------------------------------------
    def healthy(self) -> bool:
        """Alive while its loops go round (a kubelet restart is not a reason to restart the agent)."""
        stale = 3 * max(self.config.poll_seconds, self.config.backoff_max_seconds)
        return self.state.last_tick > 0 and time.monotonic() - self.state.last_tick < stale

    def view(self) -> dict[str, Any]:
        inv = self.state.inventory
        return {
            "node": self.config.node,
            "source": inv.source if inv else "none",
            "gpus": inv.topology.gpu_count if inv else 0,
            "topology": inv.annotation() if inv else None,
            "kubeletError": self.state.kubelet_error,
            "allocatable": self.state.allocatable,
            "report": self.state.report.to_annotation() if self.state.report else None,
            "published": self.state.published,
        }

    def app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok") if self.healthy() else web.Response(text="stalled", status=503)

        async def readyz(_: web.Request) -> web.Response:
            if self.state.kubelet_error:
                return web.Response(text=f"kubelet: {self.state.kubelet_error}", status=503)
            return web.Response(text="ok") if self.state.last_tick else web.Response(text="starting", status=503)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        async def debug(_: web.Request) -> web.Response:
            return web.Response(body=orjson.dumps(self.view()), content_type="application/json")

        app = guard.application(client_max_size=1024)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/debug/agent", debug)
        return app


# The agent's port answers probes and a scrape: a few connections, small GET requests. Served as Berth's own
# health port is (serving/guard.py): aiohttp alone reads a request under no deadline and accepts without a
# cap, so a client trickling a head kept a connection open unanswered, and enough of them the descriptors.
AGENT_CONNECTIONS = 16
AGENT_REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to its reply, as Berth's head deadline
AGENT_RECEIVING = 1 << 20  # bytes still arriving over all connections together (requests are 1 KiB at most)


async def listen(runner: web.AppRunner, host: str, port: int) -> tuple[asyncio.Server, asyncio.Task[None]]:
    """Serve `runner` (set up) on host:port under the agent's bounds; the server and its deadline task."""
    bounds = (AGENT_REQUEST_TIMEOUT, AGENT_CONNECTIONS, AGENT_RECEIVING)
    return await guard.listen(runner, host, port, bounds, backlog=128)


async def serve(config: AgentConfig, kubeconfig: str | None) -> int:
    from scheduler.cluster.kube import KubeClient, load_configuration

    client = KubeClient(load_configuration(kubeconfig))
    kubelet = PodResourcesClient(config.socket, config.rpc_deadline_seconds)
    agent = Agent(config, KubeNodeWriter(client), kubelet, lambda: discover(lambda: nvml.load(config.nvml_module)))
    runner = web.AppRunner(agent.app(), access_log=None, handle_signals=False, auto_decompress=False)
    await runner.setup()
    server, sweep = await listen(runner, config.host, config.port)
    log.info("berth agent for node %s on %s:%d, kubelet at %s", config.node, config.host, config.port, config.socket)
    task = asyncio.create_task(agent.run(), name="agent")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    server.close()
    sweep.cancel()
    await runner.cleanup()
    await kubelet.close()
    await client.close()
    return 0
