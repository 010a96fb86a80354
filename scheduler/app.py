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

from aiohttp import web

from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.extender.debug import refresh_gauges
from scheduler.extender.server import Berth
from scheduler.extender.verbs_http import VerbServer
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import account_gpu_seconds
from scheduler.policy.binder import Binder

log = logging.getLogger("berth")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt(3) parameters


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


def tune_gc() -> None:
    """Allocation-heavy request handling would otherwise trigger young collections every few requests."""
    gc.set_threshold(50_000, 20, 20)


async def housekeeping(state: ClusterState, metrics: Metrics, every: float = 1.0, freeze_every: float = 30.0) -> None:
    """Expire unconfirmed reservations, refresh gauges and count GPU-seconds, once a second; keep the
    long-lived cluster picture out of the cyclic collector's way (frozen objects are never rescanned,
    so a full collection does not stall a filter call for tens of milliseconds)."""
    last = last_freeze = time.monotonic()
    synced = False
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        try:
            state.reservations.expire()
            refresh_gauges(state, metrics)
            account_gpu_seconds(state, metrics, now - last)
        except Exception:
            log.exception("housekeeping failed")
        if (state.ready and not synced) or now - last_freeze > freeze_every:
            if not synced:
                gc.collect()
            gc.freeze()
            synced, last_freeze = synced or state.ready, now
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


async def serve(config: Config, demo: bool, kubeconfig: str | None,
                tls: tuple[str | None, str | None, str | None] = (None, None, None)) -> int:
    tune_malloc()
    state = ClusterState(config)
    metrics = Metrics()
    tasks: list[asyncio.Task[None]] = []
    client = None
    if demo:
        from scheduler import demo as demo_cluster
        demo_cluster.populate(state, config.demo.nodes, config.demo.seed)
        binder = Binder(state, None, None)
        berth = Berth(state, metrics, binder)
    else:
        from scheduler.cluster.informer import informers
        from scheduler.cluster.kube import KubeClient, load_configuration
        from scheduler.cluster.status import StatusWriter
        try:
            cfg = load_configuration(kubeconfig)
        except Exception as exc:  # the kubernetes loader raises several unrelated types
            raise StartupError(f"cannot load the cluster configuration: {exc}") from exc
        client = KubeClient(cfg)
        timeout = config.bind.timeout_seconds
        binder = Binder(state, lambda a, ann: client.bind(a, ann, timeout), client.get_pod)
        feeds = informers(client, state)
        berth = Berth(state, metrics, binder, client.get_pod, feeds)
        tasks += [asyncio.create_task(i.run(), name=f"informer-{i.resource}") for i in feeds]
        tasks.append(asyncio.create_task(StatusWriter(client, state).run(), name="status"))
    tasks.append(asyncio.create_task(housekeeping(state, metrics), name="housekeeping"))

    ctx = tls_context(*tls)
    verb_port = config.server.tls_port if ctx is not None else config.server.port
    runners = [await _listen(berth, config, verb_port, ctx, verbs=True)]
    if ctx is not None:
        runners.append(await _listen(berth, config, config.server.port, None, verbs=False))
    log.info("Berth serving the verbs on %s://%s:%s%s (%s, %s kernels)", "https" if ctx else "http",
             config.server.host, config.server.tls_port if ctx else config.server.port,
             f", health and metrics on port {config.server.port}" if ctx else "",
             "demo cluster" if demo else "live cluster", "native" if _native() else "python")
    tune_gc()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await _shutdown(berth, runners, tasks, config.server.shutdown_grace_seconds)
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


async def _listen(berth: Berth, config: Config, port: int, ctx: ssl.SSLContext | None, verbs: bool) -> Listener:
    """aiohttp serves the whole API; on the verbs' port each connection starts with the hot-path
    handler (verbs_http.py), which hands anything but a verb POST to aiohttp's protocol."""
    host = config.server.host
    runner = web.AppRunner(berth.app(verbs=verbs), access_log=None, keepalive_timeout=config.server.keepalive_timeout,
                           handle_signals=False)
    await runner.setup()
    try:
        if not verbs:
            await web.TCPSite(runner, host, port, ssl_context=ctx, backlog=1024, reuse_address=True).start()
            return Listener(runner, runner.addresses[0][1])
        assert runner.server is not None
        verb_server = VerbServer(berth.verbs, runner.server, config.server.keepalive_timeout)
        server = await asyncio.get_running_loop().create_server(verb_server, host, port, ssl=ctx, backlog=1024,
                                                                reuse_address=True)
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from exc
    return Listener(runner, server.sockets[0].getsockname()[1], verb_server, server,
                    asyncio.create_task(verb_server.sweep(), name="keepalive"))


async def _shutdown(berth: Berth, runners: list[Listener], tasks: list[asyncio.Task[None]],
                    grace: float) -> None:
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
