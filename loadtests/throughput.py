"""End-to-end scheduling throughput: the real kube-scheduler alone, and with Berth as its extender.

`make bench-e2e` (`python -m loadtests.throughput`). On the local control plane (tests/e2e/harness.py:
etcd + kube-apiserver, no kubelets), for each node count: create the nodes (concurrent POSTs; every
4th node has 8 GPUs, all in pool `shared`), then schedule the same stream of pods

  (a) with a kube-scheduler whose only profile is `plain` and no extender, and
  (b) with a kube-scheduler whose only profile is `zerocost-scheduler` and the zero-cost extender
      (loadtests/zerocost: filter passes every node, equal scores, bind posts the Binding): the
      protocol's own ceiling, what an extender that does no work costs kube-scheduler, and
  (c) with a kube-scheduler whose only profile is `berth-scheduler`, Berth doing filter, prioritize and
      bind (Berth and the zero-cost extender run with Berth's ServiceAccount token from
      `install_berth_identity()`),

each with the default (adaptive) percentageOfNodesToScore and with 100. The pods (100m CPU, 256Mi, every
10th asks for 1 GPU) are all created up front as fast as the client can (64 concurrent POSTs); the rate
is pods / (first POST -> the watch sees the last pod bound). Only one kube-scheduler runs at a time and
each extender runs only during its own mode. CPU of every process (from /proc/<pid>/stat deltas) and of the whole
machine (/proc/stat: "other" is what the rest of the machine used) is recorded to show what limits each
run. Between runs the pods are deleted (grace 0; each run has a fresh namespace) and Berth's cache must be
back to empty usage.
"""

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from loadtests.procs import zerocost_binary
from tests.e2e import harness as h
from tests.e2e.objects import node, pod

GROUP = "bench"
PLAIN = "plain"
BERTH = "berth-scheduler"
ZERO = "zerocost-scheduler"
MODES = ("plain", "zero", "berth")  # kube-scheduler alone, with the zero-cost extender, with Berth
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROCS = ("kube-apiserver", "etcd", "kube-scheduler", "berth", "zerocost", "client")


# -- a small async client for the API server (admin token) --------------------------------------------
class Api:
    """aiohttp with the admin token: bulk creates with bounded concurrency, lists, deletes, watches."""

    def __init__(self, url: str, token: str, concurrency: int = 64) -> None:
        self.url = url
        self.concurrency = concurrency
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=concurrency + 8))

    async def __aenter__(self) -> "Api":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
        ok: Iterable[int] = (200, 201),
    ) -> dict[str, Any]:
        url = path if path.startswith("http") else self.url + path
        async with self.session.request(method, url, data=body, params=params, headers=self.headers) as r:
            raw = await r.read()
            if r.status not in ok:
                raise RuntimeError(f"{method} {path}: {r.status} {raw[:300].decode(errors='replace')}")
            return orjson.loads(raw) if raw else {}

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return await self.request("GET", path, params=params)

    async def create_all(self, path: str, bodies: list[bytes]) -> None:
        await self.post_all([(path, body) for body in bodies])

    async def post_all(self, posts: list[tuple[str, bytes]]) -> None:
        """POST every (path, body), `concurrency` at a time (a fixed pool of workers on one iterator)."""
        queue = iter(posts)

        async def worker() -> None:
            for path, body in queue:
                await self.request("POST", path, body)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(posts)))))

    async def watch(self, path: str, rv: str, selector: str = "") -> AsyncIterator[dict[str, Any]]:
        params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "3600"}
        if selector:
            params["labelSelector"] = selector
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.session.get(self.url + path, params=params, headers=self.headers, timeout=timeout) as r:
            if r.status != 200:
                raise RuntimeError(f"watch {path}: {r.status}")
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)


# -- objects -----------------------------------------------------------------------------------------------
def node_bodies(start: int, stop: int, gpu_node_every: int) -> list[bytes]:
    out = []
    for i in range(start, stop):
        if gpu_node_every and i % gpu_node_every == 0:
            obj = node(f"bn-{i:05d}", GROUP, cpu="96", memory="1Ti", gpus=8)
        else:
            obj = node(f"bn-{i:05d}", GROUP, cpu="32", memory="128Gi")
        out.append(orjson.dumps(obj))
    return out


def pod_bodies(count: int, scheduler: str, gpu_every: int) -> list[bytes]:
    return [
        orjson.dumps(
            pod(
                f"p-{i:05d}",
                GROUP,
                gpus=1 if gpu_every and i % gpu_every == 0 else 0,
                cpu="100m",
                memory="256Mi",
                scheduler=scheduler,
            )
        )
        for i in range(count)
    ]


# -- CPU accounting ----------------------------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / CLK_TCK


class CpuSampler:
    """%CPU of named processes (100 = one core) averaged over a run, and the peak over `every` intervals."""

    def __init__(self, pids: dict[str, int], every: float = 0.5) -> None:
        self.pids = pids
        self.every = every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        now: dict[str, float] = {"machine": machine_busy()}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                now[name] = proc_cpu(pid)
        self.samples.append((time.monotonic(), now))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self._sample()

    def start(self) -> None:
        self._sample()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        return self._percent(self.samples[0], self.samples[-1]), self._peaks()

    @staticmethod
    def _percent(a: tuple[float, dict[str, float]], b: tuple[float, dict[str, float]]) -> dict[str, float]:
        wall = max(b[0] - a[0], 1e-6)
        out = {k: 100 * (b[1][k] - a[1][k]) / wall for k in b[1] if k in a[1]}
        ours = sum(v for k, v in out.items() if k != "machine")
        out["other"] = max(0.0, out.pop("machine", 0.0) - ours)
        return out

    def _peaks(self) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            for k, v in self._percent(a, b).items():
                peaks[k] = max(peaks.get(k, 0.0), v)
        return peaks


def limiting(r: "Result", ncpu: int) -> str:
    """What most likely limits a run, from its CPU picture and its timeline."""
    cpu = r.cpu
    busy = sum(cpu.values())
    top = max((k for k in cpu if k != "other"), key=lambda k: cpu[k])
    notes = []
    if r.seconds and r.seconds - r.create_seconds < 0.1 * r.seconds:
        notes.append("binding kept pace with pod creation (API server writes)")
    if busy >= 0.9 * 100 * ncpu:
        other = f", other processes {cpu['other']:.0f}%" if cpu.get("other", 0) >= 20 else ""
        notes.append(f"machine CPU ({busy:.0f}% of {100 * ncpu}%): {top} {cpu[top]:.0f}%{other}")
    elif cpu[top] >= 90 and top in ("berth", "zerocost", "client"):
        notes.append(f"{top}: one core ({cpu[top]:.0f}%)")
    else:
        notes.append(f"{top} {cpu[top]:.0f}%, no CPU saturated: the serial scheduling loop's latency")
    return "; ".join(notes)


# -- one measured run ----------------------------------------------------------------------------------------
@dataclass
class Result:
    nodes: int
    pct: int | None
    mode: str
    pods: int
    bound: int = 0
    seconds: float = 0.0
    create_seconds: float = 0.0
    first_bind: float = 0.0
    unschedulable: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    cache_empty: bool | None = None
    verbs: dict[str, tuple[int, float]] = field(default_factory=dict)  # Berth: verb -> (calls, mean ms)
    names_cache_hits: int = 0  # Berth's NodeNames cache hits during the run
    run: int = 1
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def rate(self) -> float:
        return self.bound / self.seconds if self.seconds else 0.0

    @property
    def pct_label(self) -> str:
        return "default" if self.pct is None else str(self.pct)


class BindWatch:
    """Watches a namespace's pods and notes when each `p-*` pod is first seen bound. The API server
    closes a watch whose reader falls behind (this process is busy creating pods): resume from the last
    resourceVersion seen, as an informer does."""

    def __init__(self, api: Api, ns: str, rv: str, expect: int) -> None:
        self.api, self.ns, self.rv, self.expect = api, ns, rv, expect
        self.bound: dict[str, float] = {}
        self.unschedulable = 0
        self.rewatches = 0

    async def run(self) -> None:
        while True:
            async for event in self.api.watch(f"/api/v1/namespaces/{self.ns}/pods", self.rv):
                if self._event(event):
                    return
            self.rewatches += 1

    def _event(self, event: dict[str, Any]) -> bool:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        if event.get("type") == "ERROR":
            raise RuntimeError(f"watch of {self.ns} failed: {obj.get('message')}")
        self.rv = meta.get("resourceVersion") or self.rv
        name = meta.get("name", "")
        if event.get("type") not in ("ADDED", "MODIFIED") or not name.startswith("p-"):
            return False
        if (obj.get("spec") or {}).get("nodeName"):
            self.bound.setdefault(name, time.monotonic())
            return len(self.bound) >= self.expect
        if any(
            c.get("type") == "PodScheduled" and c.get("status") == "False"
            for c in (obj.get("status") or {}).get("conditions") or []
        ):
            self.unschedulable += 1
        return False


async def wait_for(check: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


async def pod_gone(api: Api, ns: str, name: str) -> bool:
    items = (await api.get(f"/api/v1/namespaces/{ns}/pods", {"fieldSelector": f"metadata.name={name}"}))["items"]
    return not items


async def warm_up(api: Api, ns: str, scheduler: str, sched: h.Proc, berth: "BerthRun | None") -> None:
    """One pod through the new scheduler: proves it has synced its caches (and Berth its part)."""
    await api.request(
        "POST",
        f"/api/v1/namespaces/{ns}/pods",
        orjson.dumps(pod("warmup", GROUP, cpu="100m", memory="256Mi", scheduler=scheduler)),
    )

    async def bound() -> bool:
        if not sched.alive:
            raise RuntimeError(f"{sched.name} exited:\n{sched.tail()}")
        return bool((await api.get(f"/api/v1/namespaces/{ns}/pods/warmup"))["spec"].get("nodeName"))

    await wait_for(bound, 180, f"{sched.name} to bind a warm-up pod")
    await api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/warmup", params={"gracePeriodSeconds": "0"})
    await wait_for(lambda: pod_gone(api, ns, "warmup"), 30, "the warm-up pod to go")
    if berth:
        await berth.wait_empty(api)


async def delete_pods(api: Api, ns: str) -> None:
    await api.request("DELETE", f"/api/v1/namespaces/{ns}/pods", params={"gracePeriodSeconds": "0"})

    async def empty() -> bool:
        return not (await api.get(f"/api/v1/namespaces/{ns}/pods", {"limit": "1"}))["items"]

    await wait_for(empty, 120, f"the pods of {ns} to be deleted", every=0.5)


@dataclass
class BerthRun:
    proc: h.Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def verb_totals(self, api: Api) -> dict[str, list[float]]:
        """verb -> [seconds, calls] from Berth's berth_request_duration_seconds histogram."""
        async with api.session.get(f"{self.url}/metrics") as r:
            text = await r.text()
        out: dict[str, list[float]] = {}
        for line in text.splitlines():
            for part, index in (("_sum", 0), ("_count", 1)):
                prefix = f'berth_request_duration_seconds{part}{{verb="'
                if line.startswith(prefix):
                    verb = line[len(prefix) :].split('"', 1)[0]
                    out.setdefault(verb, [0.0, 0.0])[index] = float(line.rsplit(" ", 1)[1])
        return out

    async def names_cache_hits(self, api: Api) -> int:
        return int((await api.get(f"{self.url}/debug/state"))["nodeNamesCacheHits"])

    async def wait_empty(self, api: Api, timeout: float = 60) -> bool:
        """Berth's ledger holds no pod and no reservation, and every node is back to all-free."""

        async def ledger_empty() -> bool:
            s = await api.get(f"{self.url}/debug/state")
            return s["pods"] == 0 and s["reservations"] == 0

        await wait_for(ledger_empty, timeout, "Berth's ledger to drop the deleted pods")
        nodes = (await api.get(f"{self.url}/debug/nodes"))["nodes"]
        busy = [n["name"] for n in nodes if n["free"] != n["allocatable"] or n["gpuIdsUsed"]]
        if busy:
            raise AssertionError(f"Berth still counts usage on {len(busy)} nodes, e.g. {busy[:3]}")
        return True


async def measure(
    cp: h.ControlPlane,
    api: Api,
    args: argparse.Namespace,
    nodes: int,
    pct: int | None,
    berth: BerthRun | None,
    zero: "ZeroRun | None" = None,
) -> Result:
    """One run: a fresh namespace and kube-scheduler, a warm-up pod, the timed stream, then cleanup."""
    mode = "berth" if berth else "zero" if zero else "plain"
    scheduler = BERTH if berth else ZERO if zero else PLAIN
    ext_url = berth.url if berth else zero.url if zero else None
    res = Result(nodes, pct, mode, args.pods)
    ns = f"tp-{nodes}-{res.pct_label}-{mode}-{int(time.time()) % 100000}"
    await api.request("POST", "/api/v1/namespaces", orjson.dumps({"metadata": {"name": ns}}))
    cfg = h.scheduler_config(cp, cp.dir / f"sched-{ns}.yaml", ext_url, scheduler, percentage=pct, qps=args.qps)
    sched = h.start_scheduler(cp, f"kube-scheduler-{ns}", cfg)
    try:
        await warm_up(api, ns, scheduler, sched, berth)
        await timed_stream(
            api, ns, args, pod_bodies(args.pods, scheduler, args.gpu_every), pids(cp, sched, berth, zero), berth, res
        )
    finally:
        sched.stop()
    await delete_pods(api, ns)
    if berth:
        res.cache_empty = await berth.wait_empty(api)
    return res


async def timed_stream(
    api: Api,
    ns: str,
    args: argparse.Namespace,
    bodies: list[bytes],
    procs: dict[str, int],
    berth: BerthRun | None,
    res: Result,
) -> None:
    """Create every pod as fast as possible and time until the watch has seen each one bound."""
    rv = (await api.get(f"/api/v1/namespaces/{ns}/pods", {"limit": "1"}))["metadata"]["resourceVersion"]
    watch = BindWatch(api, ns, rv, len(bodies))
    verbs0 = await berth.verb_totals(api) if berth else {}
    hits0 = await berth.names_cache_hits(api) if berth else 0
    watcher = asyncio.create_task(watch.run())
    sampler = CpuSampler(procs)
    sampler.start()
    t0 = time.monotonic()
    await api.create_all(f"/api/v1/namespaces/{ns}/pods", bodies)
    res.create_seconds = time.monotonic() - t0
    await asyncio.wait([watcher], timeout=args.timeout)
    res.cpu, res.peak = await sampler.stop()
    if not watcher.done():
        watcher.cancel()
        say(f"timed out after {args.timeout:.0f}s with {len(watch.bound)}/{len(bodies)} pods bound")
    with contextlib.suppress(asyncio.CancelledError):
        await watcher  # raises what ended the watch early, if anything did
    res.bound, res.unschedulable, res.load = len(watch.bound), watch.unschedulable, os.getloadavg()
    if berth:
        res.verbs = verb_means(verbs0, await berth.verb_totals(api))
        res.names_cache_hits = await berth.names_cache_hits(api) - hits0
    if watch.bound:
        res.seconds = max(watch.bound.values()) - t0
        res.first_bind = min(watch.bound.values()) - t0


def verb_means(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, tuple[int, float]]:
    out = {}
    for verb, (secs, calls) in after.items():
        s0, c0 = before.get(verb, [0.0, 0.0])
        if calls > c0:
            out[verb] = (int(calls - c0), 1e3 * (secs - s0) / (calls - c0))
    return out


def pids(cp: h.ControlPlane, sched: h.Proc, berth: BerthRun | None, zero: "ZeroRun | None" = None) -> dict[str, int]:
    procs = {
        "kube-apiserver": cp.apiserver,
        "etcd": cp.etcd,
        "kube-scheduler": sched,
        "berth": berth.proc if berth else None,
        "zerocost": zero.proc if zero else None,
    }
    out = {name: p.popen.pid for name, p in procs.items() if p is not None and p.popen is not None}
    out["client"] = os.getpid()
    return out


# -- the whole benchmark -------------------------------------------------------------------------------------
async def create_nodes(api: Api, start: int, stop: int, gpu_node_every: int) -> float:
    t0 = time.monotonic()
    await api.create_all("/api/v1/nodes", node_bodies(start, stop, gpu_node_every))
    return time.monotonic() - t0


async def start_berth(cp: h.ControlPlane, api: Api, kubeconfig: Path, nodes: int) -> BerthRun:
    port = h.free_port()
    proc = h.start_berth(cp, kubeconfig, port, name=f"berth-{nodes}")
    run = BerthRun(proc, port)
    await asyncio.to_thread(h.wait_ready, run.url, proc, 180)
    state = await api.get(f"{run.url}/debug/state")
    if state["nodes"] != nodes:
        raise AssertionError(f"Berth holds {state['nodes']} nodes, expected {nodes}")
    return run


@dataclass
class ZeroRun:
    """The zero-cost extender (loadtests/zerocost), binding with Berth's ServiceAccount token."""

    proc: h.Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_zero(cp: h.ControlPlane, kubeconfig: Path, name: str = "zerocost") -> ZeroRun:
    """Start the zero-cost extender with the token of `kubeconfig` (a file only this user can read)."""

    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    token_file = cp.dir / f"{name}.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = h.free_port()
    argv = [str(zerocost_binary()), "-addr", f"127.0.0.1:{port}", "-server", cp.url, "-token-file", str(token_file)]
    run = ZeroRun(h.Proc(name, argv, cp.dir).start(), port)
    h.wait_ready(run.url, run.proc, 60)
    return run


async def bench(args: argparse.Namespace) -> list[Result]:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM: unwind, so the control plane and schedulers are stopped
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    cp = h.ControlPlane(workload_api=False).start()  # the alpha gang API slows pod admission
    results: list[Result] = []
    try:
        berth_kc = cp.install_berth_identity()
        async with Api(cp.url, cp.ADMIN_TOKEN, args.concurrency) as api:
            have = 0
            for n in args.nodes:
                took = await create_nodes(api, have, n, args.gpu_node_every)
                say(f"{n - have} nodes created in {took:.1f}s ({(n - have) / took:.0f}/s); {n} in all")
                have = n
                for mode in args.modes:
                    berth = await start_berth(cp, api, berth_kc, n) if mode == "berth" else None
                    zero = await asyncio.to_thread(start_zero, cp, berth_kc) if mode == "zero" else None
                    try:
                        for rep in range(args.repeat):
                            for pct in args.pcts:
                                r = await measure(cp, api, args, n, pct, berth, zero)
                                r.run = rep + 1
                                results.append(r)
                                say(describe(r))
                    finally:
                        for ext in (berth, zero):
                            if ext:
                                ext.proc.stop()
    finally:
        cp.stop()
        if args.keep:
            say(f"logs kept in {cp.dir}")
        else:
            h.cleanup(cp.dir)
    return results


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def describe(r: Result) -> str:
    cpu = ", ".join(f"{k} {r.cpu.get(k, 0):.0f}%" for k in (*PROCS, "other") if k in r.cpu)
    return (
        f"{r.nodes} nodes, pct {r.pct_label}, {r.mode}: {r.bound}/{r.pods} bound in {r.seconds:.2f}s = "
        f"{r.rate:.0f} pods/s (created in {r.create_seconds:.2f}s, first bind {r.first_bind:.2f}s, "
        f"{r.unschedulable} unschedulable events); CPU {cpu}"
        + ("" if r.cache_empty is None else f"; Berth cache empty after delete: {r.cache_empty}")
        + "".join(f"; Berth {v} {ms:.2f} ms x{n}" for v, (n, ms) in sorted(r.verbs.items()))
    )


# -- reporting -------------------------------------------------------------------------------------------------
def summary_table(results: list[Result]) -> list[str]:
    rows = [
        "| nodes | pct | pods | runs | pods/s alone | pods/s zero-cost extender | pods/s with Berth "
        "| Berth / alone | Berth / zero-cost |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for nodes, pct in sorted({(r.nodes, r.pct if r.pct is not None else -1) for r in results}):
        same = [r for r in results if r.nodes == nodes and (r.pct if r.pct is not None else -1) == pct]
        plain = _median([r.rate for r in same if r.mode == "plain"])
        zero = _median([r.rate for r in same if r.mode == "zero"])
        berth = _median([r.rate for r in same if r.mode == "berth"])
        ratio = f"{berth / plain:.2f}" if plain and berth else "-"
        ratio_zero = f"{berth / zero:.2f}" if zero and berth else "-"
        complete = all(r.bound == r.pods for r in same)
        runs = max(r.run for r in same)
        rows.append(
            f"| {nodes} | {'default' if pct < 0 else pct} | {same[0].pods} | {runs} | {_num(plain)} | "
            f"{_num(zero)} | {_num(berth)} | {ratio} | {ratio_zero} |"
            + ("" if complete else " (some pods never bound)")
        )
    return rows


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def detail_table(results: list[Result], ncpu: int) -> list[str]:
    head = (
        "| nodes | pct | scheduler | run | pods/s | create s | first bind s | last bind s | "
        + " | ".join(f"{p} %CPU (peak)" for p in PROCS)
        + " | other %CPU | CPU ms per pod | Berth mean ms (calls) | limited by | Berth cache empty |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cpu = " | ".join(f"{r.cpu[p]:.0f} ({r.peak.get(p, 0):.0f})" if p in r.cpu else "-" for p in PROCS)
        empty = "-" if r.cache_empty is None else ("yes" if r.cache_empty else "NO")
        verbs = ", ".join(f"{v} {ms:.2f} ({n})" for v, (n, ms) in sorted(r.verbs.items())) or "-"
        if r.mode == "berth":
            verbs += f"; NodeNames cache hits {r.names_cache_hits}"
        rows.append(
            f"| {r.nodes} | {r.pct_label} | {r.mode} | {r.run} | {r.rate:.0f} | {r.create_seconds:.2f} | "
            f"{r.first_bind:.2f} | {r.seconds:.2f} | {cpu} | {r.cpu.get('other', 0):.0f} | {per_pod(r)} | "
            f"{verbs} | {limiting(r, ncpu)} | {empty} |"
        )
    return rows


def per_pod(r: Result) -> str:
    """CPU milliseconds each of our processes spent per bound pod, and their total."""
    if not r.bound:
        return "-"
    ms = {p: 10 * r.cpu[p] * r.seconds / r.bound for p in PROCS if p in r.cpu}  # % x s / pods -> ms
    short = {"kube-apiserver": "apiserver", "kube-scheduler": "scheduler"}
    return f"{sum(ms.values()):.1f}: " + ", ".join(f"{short.get(p, p)} {v:.1f}" for p, v in ms.items())


def machine_facts() -> list[str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return [
        f"- nproc: {os.cpu_count()}; CPU: {model}; {platform.system()} {platform.release()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; uptime at the end: `{uptime}`",
        f"- kube-scheduler/kube-apiserver/etcd from {h.k8s_bin()}; Python {platform.python_version()}",
    ]


def markdown(results: list[Result], args: argparse.Namespace, argv: list[str]) -> str:
    ncpu = os.cpu_count() or 1
    lines = [
        "# End-to-end scheduling throughput: kube-scheduler alone, with the zero-cost extender, with Berth",
        "",
        f"`{' '.join(shlex.quote(a) for a in ['python', '-m', 'loadtests.throughput', *argv])}`",
        "",
        *machine_facts(),
        "",
        f"{args.pods} pods per run (100m CPU, 256Mi; every {args.gpu_every}th asks for 1 GPU), all created up "
        f"front by {args.concurrency} concurrent POSTs; pods/s = pods / (first POST -> last pod seen bound). "
        f"Nodes: kubelet-less, every {args.gpu_node_every}th with 8 GPUs, pool `shared`. kube-scheduler "
        f"client QPS {args.qps}, burst {2 * args.qps}. One kube-scheduler at a time; each extender (Berth, "
        "the zero-cost one) runs only for its own runs. "
        "pct = percentageOfNodesToScore (default: adaptive, max(5, 50 - nodes/125)%).",
        "",
        *summary_table(results),
        "",
        "pods/s is the median over the runs of a case (all runs are in the table below).",
        "",
        "Per run: %CPU is averaged over the run (100 = one core; peak over 0.5 s samples in brackets). "
        "`client` is this benchmark process (creating pods and watching them); `other` is the rest of "
        "the machine (other users' processes). CPU ms per pod: CPU time of each of our processes over the run "
        "divided by the pods bound (the cost that fills 2 cores).",
        "",
        *detail_table(results, ncpu),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="1000,5000", help="comma-separated node counts (default 1000,5000)")
    p.add_argument("--pods", type=int, default=2000, help="pods per run (default 2000)")
    p.add_argument("--pcts", default="default,100", help="percentageOfNodesToScore values; 'default' = unset")
    p.add_argument("--modes", default="plain,zero,berth", help="of plain, zero, berth (default all three)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each case; the summary shows the median")
    p.add_argument("--gpu-every", type=int, default=10, help="every Nth pod asks for 1 GPU (0: none)")
    p.add_argument("--gpu-node-every", type=int, default=4, help="every Nth node has 8 GPUs (0: none)")
    p.add_argument("--qps", type=int, default=2000, help="kube-scheduler client QPS (burst is twice that)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent POSTs of this client")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for one run's pods to bind")
    p.add_argument("--markdown", help="write the tables, the command line and machine facts to this file")
    p.add_argument("--keep", action="store_true", help="keep the control plane's directory (logs)")
    args = p.parse_args(argv)
    args.nodes = sorted(int(x) for x in args.nodes.split(","))
    args.pcts = [None if x == "default" else int(x) for x in args.pcts.split(",")]
    args.modes = [m for m in MODES if m in args.modes.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    results = asyncio.run(bench(args))
    print("\n".join(summary_table(results)))
    print()
    print("\n".join(detail_table(results, os.cpu_count() or 1)))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, args, argv))
        say(f"wrote {args.markdown}")
    return 0 if all(r.bound == r.pods for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
