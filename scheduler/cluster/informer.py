"""List + watch of one resource, feeding ClusterState: paginated lists, resourceVersion continuation,
watch bookmarks, a full relist on 410 Gone, and backoff with jitter while the API server is away.

Events are decoded with orjson and handed to the state as plain dicts: no per-object models.
"""

import asyncio
import contextlib
import gc
import logging
import random
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import aiohttp
import orjson

from scheduler.cluster.dra import DRA_PATH
from scheduler.cluster.kube import KubeClient, KubeError
from scheduler.cluster.state import ClusterState
from scheduler.model.names import PODGROUP_GROUP, PODGROUP_VERSION, WORKLOAD_GROUP, WORKLOAD_VERSION

log = logging.getLogger("berth.informer")
Apply = Callable[[str, dict[str, Any]], None]


class Gone(Exception):
    """The resourceVersion we watch from is too old: relist."""


class _GcPause:
    """The cyclic collector is off while any list is being applied. Each page of 500 pods allocates
    ~50,000 dicts and lists that the collector would examine and promote again and again (~3.5 s of a
    150,000-pod initial sync, measured by loadtests/scale.py); those objects hold no cycles and go with
    their reference counts. Counted, so the concurrent lists of several informers nest."""

    depth = 0
    reenable = False

    @classmethod
    @contextlib.contextmanager
    def during(cls) -> Iterator[None]:
        if cls.depth == 0:
            cls.reenable = gc.isenabled()
            gc.disable()
        cls.depth += 1
        try:
            yield
        finally:
            cls.depth -= 1
            if cls.depth == 0 and cls.reenable:
                gc.enable()


class Lines:
    """The complete lines of a stream fed chunk by chunk, in time linear in its bytes: an index moves along
    each chunk (bytes.find is memchr), and the unfinished last line waits as a list of pieces (a 1 MB object
    spread over many chunks is joined once, when its newline arrives). Cutting a line at a time off the front
    of a buffer copied the rest of the chunk for every event in it: quadratic in the events per chunk."""

    def __init__(self) -> None:
        self._tail: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            lines.append(chunk[start:nl])
            start = nl + 1
        if lines and self._tail:
            lines[0] = b"".join([*self._tail, lines[0]])
            self._tail = []
        if start < len(chunk):
            self._tail.append(chunk[start:] if start else chunk)
        return lines


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class Informer:
    retry_delay = 0.2  # seconds before the first retry; doubled, with jitter, up to 30 s

    def __init__(
        self,
        client: KubeClient,
        state: ClusterState,
        resource: str,
        path: str,
        apply: Apply,
        field_selector: str | None = None,
        page_size: int = 500,
        watch_timeout: int = 300,
        optional: bool = False,
    ) -> None:
        self.client = client
        self.state = state
        self.resource = resource
        self.path = path
        self.apply = apply
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.optional = optional  # a missing CRD is "nothing to watch yet", not an outage
        self.known: set[str] = set()
        self.rv = ""
        self.lists = 0  # full lists done: the first, then one per 410 Gone or lost watch
        self.events = 0

    async def run(self) -> None:
        self.state.mark_synced(self.resource, False)
        delay = self.retry_delay
        while True:
            try:
                await self._list()
                delay = self.retry_delay
                while True:
                    await self._watch()
            except Gone:
                log.info("%s: watch expired (410 Gone); relisting", self.resource)
            except KubeError as exc:
                if exc.status == 404 and self.optional:
                    log.warning(
                        "%s: not served by the API server (CRD not installed?); retrying in 30 s", self.resource
                    )
                    self.state.mark_synced(self.resource, True)
                    await asyncio.sleep(30)
                    continue
                log.warning("%s: API error %s; retrying in %.1fs", self.resource, exc, delay)
                delay = await _backoff(delay)
            except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
                log.warning("%s: API server unreachable (%s); retrying in %.1fs", self.resource, exc, delay)
                delay = await _backoff(delay)

    def _params(self) -> dict[str, str]:
        return {"fieldSelector": self.field_selector} if self.field_selector else {}

    async def _list(self) -> None:
        with _GcPause.during():
            await self._list_pages()

    async def _list_pages(self) -> None:
        seen: set[str] = set()
        try:
            async with contextlib.aclosing(self._pages(seen)) as pages:
                async for page in pages:
                    for obj in page.get("items") or []:
                        seen.add(object_key(obj))
                        self.apply("ADDED", obj)
        except BaseException:
            self.known |= seen  # applied already: the next list must delete what is gone by then
            raise
        for key in self.known - seen:  # deleted while we were not watching
            ns, _, name = key.rpartition("/")
            self.apply("DELETED", {"metadata": {"name": name, "namespace": ns or None}})
        self.known = seen
        self.lists += 1
        self.state.mark_synced(self.resource, True)
        log.info("%s: listed %d objects at resourceVersion %s", self.resource, len(seen), self.rv)

    async def _pages(self, seen: set[str]) -> AsyncGenerator[dict[str, Any], None]:
        """The pages of one full list; the last one sets self.rv. A 410 on a continue token restarts the
        list (and empties `seen`). The next page is requested before this one is handed out, so the API
        server encodes it while Berth applies this one: the two overlap instead of taking turns (150,000
        pods from a real kube-apiserver on 2 cores: see loadtests/scale.py --ab)."""
        pending = self._fetch("")
        try:
            while True:
                try:
                    page = await pending
                except KubeError as exc:
                    if exc.status == 410:  # the continue token expired: start the list again
                        self.known |= seen  # applied from the aborted pages: deleted unless listed again
                        seen.clear()
                        pending = self._fetch("")
                        continue
                    raise
                meta = page.get("metadata") or {}
                cont = meta.get("continue") or ""
                if cont:
                    pending = self._fetch(cont)
                    await asyncio.sleep(0)  # let the request go out before the CPU-bound apply
                else:
                    self.rv = meta.get("resourceVersion") or ""
                yield page
                if not cont:
                    return
        finally:
            _discard(pending)

    def _fetch(self, cont: str) -> "asyncio.Future[dict[str, Any]]":
        params = self._params() | {"limit": str(self.page_size)}
        if cont:
            params["continue"] = cont
        return asyncio.ensure_future(self.client.get_json(self.path, params))

    async def _watch(self) -> None:
        params = self._params() | {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.rv,
            "timeoutSeconds": str(self.watch_timeout),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.watch_timeout + 30)
        async with self.client.session.get(
            self.client.base + self.path, params=params, headers=self.client.headers(), timeout=timeout
        ) as resp:
            if resp.status == 410:
                raise Gone()
            if resp.status != 200:
                raise KubeError(resp.status, (await resp.read())[:300].decode(errors="replace"))
            # Split on newlines ourselves: aiohttp's readline caps lines at 64 KiB and big
            # objects (a Node with many images) exceed that.
            lines = Lines()
            async for chunk in resp.content.iter_any():
                for line in lines.feed(chunk):
                    if line.strip():
                        self._event(orjson.loads(line))

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise KubeError(int(obj.get("code") or 500), str(obj.get("message")))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.rv = rv
        self.state.touch()
        if kind == "BOOKMARK":
            return
        key = object_key(obj)
        if kind == "DELETED":
            self.known.discard(key)
        else:
            self.known.add(key)
        self.events += 1
        self.apply(str(kind), obj)


def _discard(fetch: "asyncio.Future[dict[str, Any]]") -> None:
    """A page request nobody will read (the list failed or was cancelled): stop it, retrieve its error."""
    if not fetch.done():
        fetch.cancel()
    elif not fetch.cancelled():
        fetch.exception()


async def _backoff(delay: float) -> float:
    await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: replicas must not retry in step
    return min(delay * 2, 30.0)


def informers(client: KubeClient, state: ClusterState) -> list[Informer]:
    # Only pods that hold resources: bound and not finished (what kube-scheduler's own cache counts).
    bound = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
    return [
        Informer(client, state, "nodes", "/api/v1/nodes", state.apply_node),
        Informer(client, state, "namespaces", "/api/v1/namespaces", state.apply_namespace),
        Informer(client, state, "teamquotas", "/apis/berth.dev/v1alpha1/teamquotas", state.apply_team, optional=True),
        Informer(client, state, "pods", "/api/v1/pods", state.apply_pod, field_selector=bound),
        *dra_informers(client, state),
    ] + (gang_informers(client, state) if state.gangs_on else [])


def dra_informers(client: KubeClient, state: ClusterState) -> list[Informer]:
    """Dynamic Resource Allocation (resource.k8s.io/v1, cluster/dra.py). Optional: an API server that does not
    serve the group (before 1.34, or with it turned off) has no claims to count."""
    path = DRA_PATH
    feeds = [
        ("deviceclasses", state.apply_device_class),
        ("resourceslices", state.apply_resource_slice),
        ("resourceclaimtemplates", state.apply_claim_template),
        ("resourceclaims", state.apply_resource_claim),
    ]
    return [Informer(client, state, name, f"{path}/{name}", apply, optional=True) for name, apply in feeds]


def gang_informers(client: KubeClient, state: ClusterState) -> list[Informer]:
    """Gangs (config.admission.enabled): the pending pods of Berth's scheduler (members that wait, gated or
    not; a pod that binds leaves this watch), scheduler-plugins PodGroups and the upstream scheduling.k8s.io
    PodGroups (both optional: no CRD or API, no groups)."""
    name = state.config.admission.scheduler_name
    pending = f"spec.nodeName=,spec.schedulerName={name}"
    return [
        Informer(client, state, "pendingpods", "/api/v1/pods", state.apply_pending_pod, field_selector=pending),
        Informer(
            client,
            state,
            "podgroups",
            f"/apis/{PODGROUP_GROUP}/{PODGROUP_VERSION}/podgroups",
            state.apply_podgroup,
            optional=True,
        ),
        Informer(
            client,
            state,
            "workloadpodgroups",
            f"/apis/{WORKLOAD_GROUP}/{WORKLOAD_VERSION}/podgroups",
            state.apply_workload_podgroup,
            optional=True,
        ),
    ]
