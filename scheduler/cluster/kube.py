"""A small asyncio client for the few API calls Berth makes, on aiohttp.

Credentials and TLS come from the `kubernetes` package's kubeconfig / in-cluster loading; requests
go through aiohttp so list and watch bodies reach orjson as bytes, with no per-object model
deserialisation (the typed client would build Python objects for every pod on every event).
"""

import os
import ssl
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import orjson
from cachetools import TTLCache
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.config import kube_config

from scheduler.model.binding import BindConflict, BindingArgs


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ClusterConfigError(Exception):
    """No usable cluster configuration; the message names every place that was tried."""


DEFAULT_KUBECONFIG = "~/.kube/config"


def kubeconfig_paths(kubeconfig: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Where the kubeconfig comes from, as kubectl looks: --kubeconfig, else $KUBECONFIG (a list joined
    by the OS path separator, merged in order), else ~/.kube/config. Returns (where, expanded paths)."""
    env = os.environ if environ is None else environ
    if kubeconfig:
        return "--kubeconfig", [os.path.expanduser(kubeconfig)]
    if env.get("KUBECONFIG"):
        return "$KUBECONFIG", [os.path.expanduser(p) for p in env["KUBECONFIG"].split(os.pathsep) if p]
    return DEFAULT_KUBECONFIG, [os.path.expanduser(DEFAULT_KUBECONFIG)]


def load_configuration(kubeconfig: str | None, environ: Mapping[str, str] | None = None) -> kclient.Configuration:
    """The cluster's address and credentials, found as kubectl finds them: --kubeconfig (which must
    exist), else the files of $KUBECONFIG or ~/.kube/config that exist, else the in-cluster service
    account. Raises ClusterConfigError naming the paths tried and why each did not do."""
    where, paths = kubeconfig_paths(kubeconfig, environ)
    present = [p for p in paths if os.path.isfile(p)]
    cfg = kclient.Configuration()
    if present:
        try:  # the library merges a list joined by ":" exactly as kubectl does
            kconfig.load_kube_config(
                config_file=kube_config.ENV_KUBECONFIG_PATH_SEPARATOR.join(present),
                client_configuration=cfg,
                persist_config=False,
            )
        except Exception as exc:  # the loader raises ConfigException, yaml errors, OSError, TypeError, ...
            raise ClusterConfigError(f"kubeconfig {', '.join(present)} ({where}) is not usable: {exc}") from exc
        return cfg
    tried = f"{where} ({', '.join(paths) or 'empty'}): no such file"
    if kubeconfig:
        raise ClusterConfigError(f"kubeconfig {tried}")
    try:
        kconfig.load_incluster_config(client_configuration=cfg)
    except (kconfig.ConfigException, OSError) as exc:  # OSError: a token or CA file it cannot read
        raise ClusterConfigError(
            f"no cluster configuration found: tried kubeconfig {tried}; tried in-cluster: {exc} "
            "(not running in a pod?). Pass --kubeconfig FILE or set KUBECONFIG, or use --demo"
        ) from exc
    return cfg


def _ssl_context(cfg: kclient.Configuration) -> ssl.SSLContext | bool:
    if not cfg.host.startswith("https"):
        return False
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


class KubeClient:
    def __init__(self, cfg: kclient.Configuration) -> None:
        self.cfg = cfg
        self.base = cfg.host.rstrip("/")
        self._ssl = _ssl_context(cfg)
        self._auth: TTLCache[str, dict[str, str]] = TTLCache(maxsize=1, ttl=10)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    async def close(self) -> None:
        await self.session.close()

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        h = self._auth.get("headers")
        if h is None:
            h = self._auth["headers"] = {"Accept": "application/json", "User-Agent": "berth/0.1"}
            # auth_settings() names the header across client versions and refreshes rotated in-cluster
            # tokens; it re-reads the configuration, so it runs every few seconds, not for every bind.
            settings = cast(dict[str, dict[str, Any]], self.cfg.auth_settings())
            for auth in settings.values():
                if auth.get("in") == "header" and auth.get("value"):
                    h[auth["key"]] = auth["value"]
        h = dict(h)
        if content_type:
            h["Content-Type"] = content_type
        return h

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(
            method,
            self.base + path,
            data=data,
            params=params,
            headers=self.headers(content_type if data else None),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return resp.status, await resp.read()

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        status, raw = await self.request("GET", path, params=params)
        if status != 200:
            raise KubeError(status, _message(raw))
        return orjson.loads(raw)

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, raw = await self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}")
        if status == 404:
            return None
        if status != 200:
            raise KubeError(status, _message(raw))
        return orjson.loads(raw)

    async def bind(self, args: BindingArgs, annotations: dict[str, str], timeout: float) -> str:
        """Write the Binding with Berth's annotations (the API server copies them onto the pod in the
        same write, so the decision and the binding land together). Returns "" or an error sentence."""
        meta: dict[str, Any] = {"name": args.name, "namespace": args.namespace, "annotations": annotations}
        if args.uid:
            meta["uid"] = args.uid  # precondition: never bind a recreated pod of the same name
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": meta,
            "target": {"apiVersion": "v1", "kind": "Node", "name": args.node},
        }
        path = f"/api/v1/namespaces/{quote(args.namespace)}/pods/{quote(args.name)}/binding"
        status, raw = await self.request("POST", path, body, timeout=timeout)
        if status in (200, 201):
            return ""
        if status == 409:
            raise BindConflict(_message(raw))
        return f"the API server refused the binding ({status}): {_message(raw)}"

    async def patch_status(self, path: str, status: dict[str, Any]) -> None:
        code, raw = await self.request(
            "PATCH", path + "/status", {"status": status}, content_type="application/merge-patch+json"
        )
        if code not in (200, 201):
            raise KubeError(code, _message(raw))


def _message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
        return str(data.get("message") or data)
    except (orjson.JSONDecodeError, AttributeError):
        return raw[:200].decode(errors="replace")
