"""Fixtures for the end-to-end suite: a real etcd + kube-apiserver for the session, Berth running with
its own ServiceAccount token (the shipped ClusterRole, not admin), and real kube-schedulers."""

import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from tests.e2e import harness as h

pytestmark = pytest.mark.e2e


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cp() -> Iterator[h.ControlPlane]:
    plane = h.ControlPlane().start()
    plane.berth_kubeconfig = plane.install_berth_identity()  # type: ignore[attr-defined]
    yield plane
    plane.stop()
    if not os.environ.get("BERTH_E2E_KEEP"):
        h.cleanup(plane.dir)
    else:
        print(f"e2e logs kept in {plane.dir}")


@pytest.fixture(scope="session")
def api(cp: h.ControlPlane) -> kclient.CoreV1Api:
    return kclient.CoreV1Api(kconfig.new_client_from_config(str(cp.admin_kubeconfig)))


@pytest.fixture(scope="session")
def custom(cp: h.ControlPlane) -> kclient.CustomObjectsApi:
    return kclient.CustomObjectsApi(kconfig.new_client_from_config(str(cp.admin_kubeconfig)))


@dataclass
class BerthHandle:
    cp: h.ControlPlane
    port: int
    kubeconfig: Path
    name: str = "berth"
    extra: list[str] = field(default_factory=list)
    proc: h.Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "BerthHandle":
        self.proc = h.start_berth(self.cp, self.kubeconfig, self.port, self.name, self.extra)
        h.wait_ready(self.url, self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return orjson.loads(r.read())

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (not want or want in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.get("/debug/nodes")["nodes"] if n["name"] == name)


@pytest.fixture(scope="module")
def berth(cp: h.ControlPlane) -> Iterator[BerthHandle]:
    handle = BerthHandle(cp, h.free_port(), cp.berth_kubeconfig).start()  # type: ignore[attr-defined]
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def berth_scheduler(cp: h.ControlPlane, berth: BerthHandle) -> Iterator[h.Proc]:
    cfg = h.scheduler_config(cp, cp.dir / f"sched-berth-{berth.port}.yaml", berth.url, "berth-scheduler")
    proc = h.start_scheduler(cp, f"kube-scheduler-berth-{berth.port}", cfg)
    time.sleep(1.0)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def default_scheduler(cp: h.ControlPlane) -> Iterator[h.Proc]:
    cfg = h.scheduler_config(cp, cp.dir / "sched-default.yaml", None, "default-scheduler")
    proc = h.start_scheduler(cp, "kube-scheduler-default", cfg)
    yield proc
    proc.stop()
