"""A fake Kubernetes API server for unit tests: aiohttp on 127.0.0.1, an ephemeral port.

It serves what Berth calls, for Nodes, Pods, Namespaces and TeamQuotas (berth.dev/v1alpha1):
- list, paginated with `limit` / `continue`, with the list's `resourceVersion`;
- watch, as chunked JSON lines (one event a line), BOOKMARK and ERROR events, and a stream that ends or
  breaks where a test says;
- get of a pod, create of a Binding, merge patch of a TeamQuota's status subresource.

By default it answers from a small store (objects by key, a global resourceVersion counter bumped on every
change) and an open watch just stays open. A test scripts what comes instead with `on(verb, path, *replies)`:
each matching request takes the next reply; when the script is used up, the default answers again. Every
request is recorded (`requests`, `calls(verb, path)`) so tests can check what Berth asked for.

Differences from a real kube-apiserver, on purpose: field and label selectors are recorded, not applied; a
paginated list is not a snapshot (pages come from the store as it is when each is asked for); a watch does
not replay history from its resourceVersion: it sends what its script says.
"""

import asyncio
import copy
import inspect
import re
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from kubernetes import client as kclient

from scheduler.cluster.kube import KubeClient

NODES = "/api/v1/nodes"
PODS = "/api/v1/pods"
NAMESPACES = "/api/v1/namespaces"
TEAMQUOTAS = "/apis/berth.dev/v1alpha1/teamquotas"
LIST_KINDS = {
    NODES: ("v1", "NodeList"),
    PODS: ("v1", "PodList"),
    NAMESPACES: ("v1", "NamespaceList"),
    TEAMQUOTAS: ("berth.dev/v1alpha1", "TeamQuotaList"),
}

_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
_BINDING = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/binding$")
_TEAM_STATUS = re.compile(r"^/apis/berth\.dev/v1alpha1/teamquotas/([^/]+)/status$")


@dataclass
class Request:
    """One request the fake got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    verb: str  # list, page (a list with a continue token), watch, get, create, patch

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Status:
    """Reply: an HTTP error with a Kubernetes Status body (a 410 to a watch or a continue token: Expired)."""

    code: int
    message: str = "scripted failure"
    reason: str = ""

    def body(self) -> dict[str, Any]:
        return status_object(self.code, self.message, self.reason)


@dataclass
class Json:
    """Reply: this body, as is."""

    body: Any
    code: int = 200


@dataclass
class Raw:
    """Reply: these bytes, as is (a body that is not JSON, as a proxy in front of the API server sends)."""

    body: bytes
    code: int = 200
    content_type: str = "text/plain"


class Abort:
    """Watch step: break the connection (no end of the chunked body)."""


@dataclass
class Hold:
    """Watch step: keep the stream open until `release` is set (or the fake closes)."""

    release: asyncio.Event | None = None


Step = dict[str, Any] | bytes | Abort | Hold


@dataclass
class Watch:
    """Reply to a watch: write the steps, then end the stream (cleanly, unless a step aborts it).
    An event dict of type ADDED / MODIFIED / DELETED goes into the store first and is sent stamped with the
    new resourceVersion; a BOOKMARK without one gets the current (bumped) version; bytes go out as they are."""

    steps: list[Step] = field(default_factory=list)


Action = Callable[["FakeApiServer", Request], Any]  # a reply or None (the default answer), or a coroutine of one
Reply = Status | Json | Raw | Watch | Action


def status_object(code: int, message: str, reason: str = "") -> dict[str, Any]:
    reasons = {404: "NotFound", 409: "Conflict", 410: "Expired", 500: "InternalError", 403: "Forbidden"}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or reasons.get(code, ""),
        "code": code,
    }


def added(obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": "ADDED", "object": obj}


def modified(obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MODIFIED", "object": obj}


def deleted(obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": "DELETED", "object": obj}


def bookmark(rv: str | None = None) -> dict[str, Any]:
    meta = {"resourceVersion": rv} if rv else {}
    return {"type": "BOOKMARK", "object": {"metadata": meta}}


def gone(message: str = "too old resource version: 1 (1000)") -> dict[str, Any]:
    """The ERROR event a watch gets when its resourceVersion has been compacted away."""
    return {"type": "ERROR", "object": status_object(410, message)}


def line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event) + b"\n"


def key_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


class FakeApiServer:
    def __init__(self) -> None:
        self.rv = 100
        self.store: dict[str, dict[str, dict[str, Any]]] = {path: {} for path in LIST_KINDS}
        self.requests: list[Request] = []
        self.sent: dict[str, list[dict[str, Any]]] = defaultdict(list)  # watch events written, by path
        self._script: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> "FakeApiServer":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._closing.set()  # open watches end
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "FakeApiServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configuration(self, token: str | None = None) -> kclient.Configuration:
        """A kubernetes Configuration for this server, as load_configuration would return (app.py)."""
        cfg = kclient.Configuration()
        cfg.host = self.url
        if token:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    def client(self, token: str | None = None) -> KubeClient:
        return KubeClient(self.configuration(token))

    # -- store and script -------------------------------------------------------------------------
    def bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def put(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (no watch event: a change the watchers miss unless a script sends it)."""
        stored = copy.deepcopy(obj)
        stored.setdefault("metadata", {})["resourceVersion"] = self.bump()
        self.store[path][key_of(stored)] = stored
        return copy.deepcopy(stored)

    def remove(self, path: str, key: str) -> None:
        del self.store[path][key]
        self.bump()

    def objects(self, path: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.store[path][k]) for k in sorted(self.store[path])]

    def on(self, verb: str, path: str, *replies: Reply) -> None:
        """Script the next answers to `verb` (list, page, watch, get, create, patch) on `path`."""
        self._script[verb, path].extend(replies)

    def calls(self, verb: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.verb == verb and r.path == path]

    # -- HTTP -------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        req = Request(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            await request.read(),
            _verb(request),
        )
        self.requests.append(req)
        reply: Any = None
        script = self._script.get((req.verb, req.path))
        if script:
            reply = script.popleft()
            if callable(reply):
                reply = reply(self, req)
                if inspect.isawaitable(reply):
                    reply = await reply
        if reply is None:
            reply = self._default(req)
        if isinstance(reply, Watch):
            return await self._stream(request, req.path, reply)
        if isinstance(reply, Status):
            return _json(reply.body(), reply.code)
        if isinstance(reply, Raw):
            return web.Response(body=reply.body, status=reply.code, content_type=reply.content_type)
        assert isinstance(reply, Json), reply
        return _json(reply.body, reply.code)

    def _default(self, req: Request) -> Reply:
        if req.verb == "watch":
            return Watch([Hold()])
        if req.verb in ("list", "page") and req.path in LIST_KINDS:
            return self._list(req)
        if req.method == "GET" and (m := _POD.match(req.path)):
            pod = self.store[PODS].get(f"{m[1]}/{m[2]}")
            return Json(pod) if pod else Status(404, f'pods "{m[2]}" not found')
        if req.method == "POST" and (m := _BINDING.match(req.path)):
            return self._bind(f"{m[1]}/{m[2]}", req.json())
        if req.method == "PATCH" and (m := _TEAM_STATUS.match(req.path)):
            return self._patch_status(m[1], req)
        return Status(404, f"the fake API server does not serve {req.method} {req.path}")

    def _list(self, req: Request) -> Reply:
        keys = sorted(self.store[req.path])
        start = int(req.query.get("continue") or 0)
        limit = int(req.query.get("limit") or 0) or len(keys) or 1
        end = start + limit
        api, kind = LIST_KINDS[req.path]
        meta = {"resourceVersion": str(self.rv), "continue": str(end) if end < len(keys) else ""}
        items = [self.store[req.path][k] for k in keys[start:end]]
        return Json({"apiVersion": api, "kind": kind, "metadata": meta, "items": items})

    def _bind(self, key: str, binding: dict[str, Any]) -> Reply:
        pod = self.store[PODS].get(key)
        if pod is None:
            return Status(404, f'pods "{key}" not found')
        uid = (binding.get("metadata") or {}).get("uid")
        if uid and uid != (pod.get("metadata") or {}).get("uid"):
            return Status(
                409,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {pod['metadata'].get('uid')}",
            )
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            return Status(409, f'pod {key} is already assigned to node "{node}"')
        pod = copy.deepcopy(pod)
        pod["spec"]["nodeName"] = binding["target"]["name"]
        ann = (binding.get("metadata") or {}).get("annotations") or {}
        pod["metadata"]["annotations"] = {**(pod["metadata"].get("annotations") or {}), **ann}
        self.put(PODS, pod)
        return Json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201)

    def _patch_status(self, name: str, req: Request) -> Reply:
        if req.headers.get("Content-Type") != "application/merge-patch+json":
            return Status(415, f"unsupported media type {req.headers.get('Content-Type')}")
        obj = self.store[TEAMQUOTAS].get(name)
        if obj is None:
            return Status(404, f'teamquotas.berth.dev "{name}" not found')
        patch = req.json()
        obj = copy.deepcopy(obj)
        obj["status"] = merge(obj.get("status"), patch.get("status"))
        return Json(self.put(TEAMQUOTAS, obj))

    async def _stream(self, request: web.Request, path: str, watch: Watch) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for step in watch.steps:
            if isinstance(step, Abort):
                assert request.transport is not None
                request.transport.abort()
                return resp
            if isinstance(step, Hold):
                await self._hold(step)
                if self._closing.is_set():
                    return resp  # the fake is shutting down: the client is gone or going
                continue
            data = step if isinstance(step, bytes) else line(self._emit(path, step))
            await resp.write(data)
        await resp.write_eof()
        return resp

    async def _hold(self, step: Hold) -> None:
        waits = [asyncio.ensure_future(self._closing.wait())]
        if step.release is not None:
            waits.append(asyncio.ensure_future(step.release.wait()))
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()

    def _emit(self, path: str, event: dict[str, Any]) -> dict[str, Any]:
        """The event as sent: a change goes into the store and carries its new resourceVersion."""
        event = copy.deepcopy(event)
        kind, obj = event["type"], event.get("object") or {}
        if kind in ("ADDED", "MODIFIED"):
            event["object"] = self.put(path, obj)
        elif kind == "DELETED":
            self.store[path].pop(key_of(obj), None)
            obj.setdefault("metadata", {})["resourceVersion"] = self.bump()
        elif kind == "BOOKMARK" and not (obj.get("metadata") or {}).get("resourceVersion"):
            event["object"] = {"kind": "Bookmark", "metadata": {"resourceVersion": self.bump()}}
        self.sent[path].append(event)
        return event


def _verb(request: web.Request) -> str:
    if request.method == "GET":
        if request.query.get("watch") in ("1", "true"):
            return "watch"
        if request.path in LIST_KINDS:
            return "page" if request.query.get("continue") else "list"
        return "get"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(request.method, "")


def _json(body: Any, code: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=code, content_type="application/json")


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    """Wait until `predicate()` holds (the informer runs in the background); fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)
