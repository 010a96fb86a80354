"""Process wiring: build the state, feed it (demo generator or informers), serve, keep house, shut
down gracefully. The process's memory policy (malloc thresholds, the collector's thresholds and the
freeze schedule) is here, in one place, next to the loop that applies it."""

import asyncio
import contextlib
import ctypes
import gc
import logging
import signal
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.extender.debug import refresh_gauges
from scheduler.extender.http_framing import connection_cap, receiving_cap
from scheduler.extender.server import Berth
from scheduler.extender.verb_server import VerbServer
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import account_gpu_seconds
from scheduler.observability.stalls import RECORDER as STALLS
from scheduler.policy.binder import Binder
from scheduler.serving.guard import guard_cap, listen

if TYPE_CHECKING:  # both import the kubernetes package, which the demo never needs
    from scheduler.cluster.kube import KubeClient
    from scheduler.cluster.leader import Elector

log = logging.getLogger("berth")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt(3) parameters
# kube-scheduler's HTTPExtender.IsInterested: with managedResources set, the extender is called only for pods
# whose containers request or limit one of those resources (docs/devices.md, ## DRA).
DRA_MANAGED_RESOURCES_WARNING = (
    "DRA: ResourceClaims count in team quotas; if this scheduler's extender entry lists managedResources, "
    "kube-scheduler skips Berth (filter and bind) for pods whose containers request none of them, so pods that "
    "get their devices only from ResourceClaims are placed without Berth's quota veto: leave managedResources "
    "empty (docs/devices.md)"
)


class StartupError(Exception):
    """Berth cannot start (bad kubeconfig, unusable certificates, port taken)."""


def tune_malloc() -> None:
    """Keep request and reply buffers (20 KB to a few MB per verb call) on the heap. glibc serves
    allocations above 128 KB from fresh mmap()s, so every 5,000-name request body and reply paid for
    page faults and zeroing: ~90 µs of a 400 KB reply on the benchmark machine. No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 8 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 32 << 20)
    except (OSError, AttributeError):
        pass


YOUNG_COLLECT_ABOVE = 2_000  # housekeeping collects the young generation once it holds this many objects
# Housekeeping's full collection before a freeze scans what was made since the last freeze, at ~0.1-0.2 us an
# object here (100,000 objects: 13 ms on a loaded core): freeze early once about this many survived young
# collections, so that pause stays near a millisecond even when pods arrive by the thousand (a bind storm
# made 80 ms of it in 30 s). At a steady 130 pods/s it is the 30-s timer that fires.
FREEZE_ABOVE = 10_000


def tune_gc() -> None:
    """Allocation-heavy request handling would otherwise trigger young collections every few requests.
    The verb connections keep the collector off during each call (verbs_http.py); housekeeping collects
    the young generation between calls (collect_young), so a collection rarely comes due in a call."""
    gc.set_threshold(50_000, 20, 20)


def collect_young() -> int:
    """Collect the youngest generation once a second when it has grown: what survived a second of calls
    (a cache entry, a reservation), a fraction of a millisecond here against up to a few ms when 50,000
    objects come due at once in the middle of a verb call. Returns the objects it held (net of those
    freed): an upper bound on what it moved to the older generations."""
    held = gc.get_count()[0]
    if gc.isenabled() and held > YOUNG_COLLECT_ABOVE:
        gc.collect(0)
        return held
    return 0


async def housekeeping(state: ClusterState, metrics: Metrics, every: float = 1.0, freeze_every: float = 30.0) -> None:
    """Expire unconfirmed reservations, refresh gauges and count GPU-seconds, once a second; keep the
    long-lived cluster picture out of the cyclic collector's way (frozen objects are never rescanned,
    so a full collection does not stall a filter call for tens of milliseconds)."""
    last = last_freeze = time.monotonic()
    synced, grown = False, 0
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        with STALLS.housekeeping_run():  # timed: what a verb call arriving now waits for
            try:
                state.reservations.expire()
                state.dra.expire_assumed()  # claims bind charged whose allocation the watch never showed
                refresh_gauges(state, metrics)
                account_gpu_seconds(state, metrics, now - last)
            except Exception:
                log.exception("housekeeping failed")
            grown += collect_young()
            if (state.ready and not synced) or now - last_freeze > freeze_every or grown > FREEZE_ABOVE:
                # Collect first: what is frozen is never collected, so a cycle left since the last freeze (a
                # closed connection, a failed request's traceback) would be kept for good. Objects frozen
                # earlier are not rescanned, so this costs what was made since the last freeze, between calls.
                gc.collect()
                gc.freeze()
                synced, last_freeze, grown = synced or state.ready, now, 0
        last = now


def tls_context(cert: str | None, key: str | None, client_ca: str | None) -> ssl.SSLContext | None:
    if not cert:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        if client_ca:
            # mTLS: the handshake itself refuses a caller without a certificate from this CA, before any
            # handler runs (bind moves pods: it must not be open).
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot use the TLS files: {exc}") from exc
    return ctx


async def serve(
    config: Config,
    demo: bool,
    kubeconfig: str | None,
    tls: tuple[str | None, str | None, str | None] = (None, None, None),
) -> int:
    tune_malloc()
    state = ClusterState(config)
    metrics = Metrics()
    tasks: list[asyncio.Task[None]] = []
    client = None
    elector: Elector | None = None
    if demo:
        from scheduler import demo as demo_cluster

        demo_cluster.populate(state, config.demo.nodes, config.demo.seed)
        binder = Binder(state, None, None)
        berth = Berth(state, metrics, binder)
    else:
        from scheduler.cluster.informer import informers
        from scheduler.cluster.kube import ClusterConfigError, KubeClient, load_configuration
        from scheduler.cluster.status import StatusWriter
        from scheduler.cluster.truth import MismatchEvents

        try:
            cfg = load_configuration(kubeconfig)
        except ClusterConfigError as exc:  # names the paths it tried
            raise StartupError(f"cannot find the cluster: {exc}") from exc
        client = KubeClient(cfg)
        timeout = config.bind.timeout_seconds
        binder = Binder(state, lambda a, ann: client.bind(a, ann, timeout), client.get_pod)
        feeds = informers(client, state)
        berth = Berth(state, metrics, binder, client.get_pod, feeds)
        tasks += [asyncio.create_task(i.run(), name=f"informer-{i.resource}") for i in feeds]
        log.info(DRA_MANAGED_RESOURCES_WARNING)
        elector = _elect(client, config, metrics, berth, tasks)
        tasks.append(asyncio.create_task(StatusWriter(client, state, elector.is_leader).run(), name="status"))
        events = MismatchEvents(client, state.truth, elector.is_leader)
        tasks.append(asyncio.create_task(events.run(), name="gpu-mismatch-events"))
    tasks.append(asyncio.create_task(housekeeping(state, metrics), name="housekeeping"))
    STALLS.install()

    ctx = tls_context(*tls)
    runners = await _listeners(berth, config, ctx)
    if config.admission.enabled and client is not None and elector is not None:
        runners += await _admission(state, config, client, elector, metrics, tasks, berth)
    if ctx is not None and config.server.tls_reload_seconds:
        tasks.append(_watch_certificate(ctx, tls, config.server.tls_reload_seconds))
    tune_gc()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await _shutdown(berth, runners, tasks, config.server.shutdown_grace_seconds)
    if elector is not None:
        await elector.release()
    if client is not None:
        await client.close()
    return 0


@dataclass
class Listener:
    runner: web.AppRunner
    port: int  # the bound port (what port 0 became)
    verbs: VerbServer | None = None  # the verb connections' handler, on the port that serves the verbs
    server: asyncio.AbstractServer | None = None
    sweep: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.sweep is not None:
            self.sweep.cancel()
        if self.verbs is not None:
            self.verbs.close_idle(0)  # idle ones now; in-flight binds have finished before close() is called
        await self.runner.cleanup()


async def _listen(
    berth: Berth, config: Config, port: int, ctx: ssl.SSLContext | None, verbs: bool, host: str | None = None
) -> Listener:
    """aiohttp serves the whole API; on the verbs' port each connection starts with the hot-path
    handler (verbs_http.py), which hands anything but a verb POST to aiohttp's protocol."""
    host = host or config.server.host
    runner = web.AppRunner(
        berth.app(verbs=verbs),
        access_log=None,
        keepalive_timeout=config.server.keepalive_timeout,
        handle_signals=False,
        # Bodies are read as sent. aiohttp inflates Content-Encoding: gzip by default, up to max_body_bytes
        # inflated: 250 KB of gzip held 250 MB per request (three at once: 1.1 GB). No caller of Berth
        # compresses (kube-scheduler, the API server's webhook calls); the hot path never inflated.
        auto_decompress=False,
    )
    await runner.setup()
    try:
        assert runner.server is not None
        if not verbs:  # health and metrics only
            return await _guarded(runner, config, host, port, ctx)
        verb_server = VerbServer(berth.verbs, runner.server, config.server.keepalive_timeout)
        server = await asyncio.get_running_loop().create_server(
            verb_server, host, port, ssl=ctx, backlog=1024, reuse_address=True
        )
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from exc
    return Listener(
        runner,
        server.sockets[0].getsockname()[1],
        verb_server,
        server,
        asyncio.create_task(verb_server.sweep(), name="keepalive"),
    )


async def _guarded(runner: web.AppRunner, config: Config, host: str, port: int, ctx: ssl.SSLContext | None) -> Listener:
    """A listener served by aiohttp alone (health and metrics, the admission webhook): its connections
    counted against a cap and each request under server.request_timeout_seconds (serving/guard.py).
    Raises OSError when the port cannot be had; `runner` is set up."""
    srv = config.server
    cap = guard_cap(connection_cap(srv.max_connections))
    bounds = (srv.request_timeout_seconds, cap, receiving_cap(srv.max_body_bytes))
    server, sweep = await listen(runner, host, port, bounds, ctx)
    return Listener(runner, server.sockets[0].getsockname()[1], None, server, sweep)


async def _shutdown(berth: Berth, runners: list[Listener], tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Stop accepting, let in-flight binds finish, release what is still unconfirmed."""
    log.info("shutting down: finishing %d in-flight binds", berth.binder.in_flight)
    berth.verbs.accepting = False
    deadline = asyncio.get_running_loop().time() + grace
    while berth.binder.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    for runner in runners:
        await runner.close()
    for key in list(berth.state.reservations):
        berth.state.forget(key)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


def _native() -> bool:
    from scheduler import kernels

    return kernels.NATIVE


# -- listeners, certificate reload, leader election ------------------------------------------------------
async def _listeners(berth: Berth, config: Config, ctx: ssl.SSLContext | None) -> list[Listener]:
    """The verbs on host:port, or with TLS on host:tls_port. Health and metrics: on the verbs' listener
    as well in plain mode; on a listener of their own at health_host:health_port when that is set (so
    the verbs can stay on 127.0.0.1), else with TLS on the plain host:port, as before."""
    srv = config.server
    verb_port = srv.tls_port if ctx is not None else srv.port
    runners = [await _listen(berth, config, verb_port, ctx, verbs=True)]
    health = (srv.health_host, srv.health_port) if srv.health_port else (srv.host, srv.port) if ctx else None
    if health is not None:
        runners.append(await _listen(berth, config, health[1], None, verbs=False, host=health[0]))
    log.info(
        "Berth serving the verbs on %s://%s:%s%s (%s, %s kernels)",
        "https" if ctx else "http",
        srv.host,
        verb_port,
        f", health and metrics only on {health[0]}:{health[1]}" if health else "",
        "live cluster" if berth.debug.fetch_pod else "demo cluster",
        "native" if _native() else "python",
    )
    return runners


def _watch_certificate(
    ctx: ssl.SSLContext, tls: tuple[str | None, str | None, str | None], every: float
) -> asyncio.Task[None]:
    from scheduler.tls import CertReloader

    cert, key, client_ca = tls
    assert cert is not None
    return asyncio.create_task(CertReloader(ctx, cert, key, client_ca).run(every), name="tls-reload")


def _elect(
    client: "KubeClient", config: Config, metrics: Metrics, berth: Berth, tasks: list[asyncio.Task[None]]
) -> "Elector":
    """Only the Lease holder writes TeamQuota status and counts GPU-seconds (from two replicas both would
    be summed twice); every replica keeps its cache warm and serves the verbs."""
    from scheduler.cluster.leader import AlwaysLeader, Elector, LeaderElector

    elector: Elector = AlwaysLeader()
    if config.leader_election.enabled:
        elector = LeaderElector(client, config.leader_election, on_change=lambda lead: metrics.leader.set(int(lead)))
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
    metrics.leader.set(int(elector.is_leader()))
    metrics.counts_showback = elector.is_leader
    berth.debug.leader_view = elector.view
    return elector


# -- gangs and the queue (scheduler/admission/) ----------------------------------------------------------
async def _admission(
    state: ClusterState,
    config: Config,
    client: "KubeClient",
    elector: "Elector",
    metrics: Metrics,
    tasks: list[asyncio.Task[None]],
    berth: Berth,
) -> list[Listener]:
    """The admission loop (it writes only while this replica leads) and, with admission.webhook_port, the
    TLS listener of /mutate and /debug/queue (every replica answers the webhook: the gate is the same)."""
    from scheduler.admission.http import admission_app
    from scheduler.admission.loop import AdmissionLoop

    loop = AdmissionLoop(state, client, elector.is_leader, metrics.registry)
    tasks.append(asyncio.create_task(loop.run(), name="admission"))
    berth.debug.queue_view = loop.view  # /debug/queue on the main listener too, behind its TLS/mTLS
    adm = config.admission
    if not adm.webhook_port:
        return []
    ctx = tls_context(adm.webhook_cert, adm.webhook_key, None)
    runner = web.AppRunner(admission_app(adm, loop), access_log=None, handle_signals=False, auto_decompress=False)
    await runner.setup()
    try:  # the API server's calls, like the health port's, counted and under the request deadline
        listener = await _guarded(runner, config, adm.webhook_host, adm.webhook_port, ctx)
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {adm.webhook_host}:{adm.webhook_port}: {exc}") from exc
    log.info("admission webhook on https://%s:%s/mutate", adm.webhook_host, adm.webhook_port)
    return [listener]
