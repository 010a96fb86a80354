"""The Lease loop (scheduler/cluster/leader.py) against a small fake of the coordination.k8s.io/v1 API that
keeps resourceVersion like the API server (a PUT with a stale one is a 409), and what it gates: TeamQuota
status and GPU-seconds are written by the leader only."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes import client as kclient

from scheduler.cluster.kube import KubeClient
from scheduler.cluster.leader import LeaderElector
from scheduler.cluster.state import ClusterState
from scheduler.cluster.status import StatusWriter
from scheduler.config import Config, ConfigError, LeaderElectionConfig, load_config
from scheduler.observability.metrics import Metrics
from scheduler.observability.showback import account_gpu_seconds
from tests.conftest import demo_cluster

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


class FakeLeases:
    """Leases by namespace/name; `fail` makes every call a 500 (an API server away)."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.fail = False
        self.conflicts = 0
        self.writes: list[str] = []  # holderIdentity of every successful write
        self.frozen: dict[str, Any] | None = None  # when set, what every GET answers (reads that race)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._maybe_fail])
        app.router.add_get(LEASES + "/{name}", self.get)
        app.router.add_post(LEASES, self.create)
        app.router.add_put(LEASES + "/{name}", self.replace)
        return app

    @web.middleware
    async def _maybe_fail(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.fail:
            return web.json_response({"message": "etcdserver: request timed out"}, status=500)
        return await handler(request)

    def _store(self, key: str, lease: dict[str, Any]) -> web.Response:
        self.version += 1
        lease["metadata"]["resourceVersion"] = str(self.version)
        self.leases[key] = lease
        self.writes.append((lease.get("spec") or {}).get("holderIdentity") or "")
        return web.json_response(lease)

    async def get(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        if self.frozen is not None:
            return web.json_response(self.frozen)
        if key not in self.leases:
            return web.json_response({"message": "not found"}, status=404)
        return web.json_response(self.leases[key])

    async def create(self, request: web.Request) -> web.Response:
        lease = orjson.loads(await request.read())
        key = f"{request.match_info['ns']}/{lease['metadata']['name']}"
        if key in self.leases:
            return web.json_response({"message": "already exists"}, status=409)
        return self._store(key, lease)

    async def replace(self, request: web.Request) -> web.Response:
        lease = orjson.loads(await request.read())
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        current = self.leases.get(key)
        if current is None:
            return web.json_response({"message": "not found"}, status=404)
        if lease["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return web.json_response({"message": "the object has been modified"}, status=409)
        return self._store(key, lease)

    def holder(self, key: str = "berth-system/berth") -> str:
        return str((self.leases.get(key, {}).get("spec") or {}).get("holderIdentity") or "")


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeLeases, str]]:
    leases = FakeLeases()
    server = TestServer(leases.app())
    await server.start_server()
    yield leases, f"http://127.0.0.1:{server.port}"
    await server.close()


def kube(url: str) -> KubeClient:
    cfg = kclient.Configuration()
    cfg.host = url
    return KubeClient(cfg)


FAST = {"lease_duration_seconds": 1, "renew_deadline_seconds": 0.6, "retry_period_seconds": 0.1}


class Replica:
    def __init__(self, url: str, name: str, **overrides: Any) -> None:
        self.client = kube(url)
        self.changes: list[bool] = []
        cfg = LeaderElectionConfig(identity=name, **{"lease_namespace": "berth-system", **FAST, **overrides})
        self.elector = LeaderElector(self.client, cfg, on_change=self.changes.append)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> "Replica":
        self.task = asyncio.create_task(self.elector.run())
        return self

    async def stop(self, release: bool = False) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if release:
            await self.elector.release()

    async def close(self) -> None:
        await self.stop()
        await self.client.close()


async def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
async def two(fake: tuple[FakeLeases, str]) -> AsyncIterator[tuple[FakeLeases, Replica, Replica]]:
    leases, url = fake
    a, b = Replica(url, "a"), Replica(url, "b")
    yield leases, a, b
    await a.close()
    await b.close()


def leaders(*replicas: Replica) -> list[str]:
    return [r.elector.identity for r in replicas if r.elector.is_leader()]


async def test_exactly_one_of_two_leads(two: tuple[FakeLeases, Replica, Replica]) -> None:
    leases, a, b = two
    a.start(), b.start()
    await until(lambda: bool(leaders(a, b)), 3, "a leader")
    for _ in range(20):  # several retry periods: never two, never a change of leader
        assert len(leaders(a, b)) == 1
        await asyncio.sleep(0.05)
    (leader,) = leaders(a, b)
    assert leases.holder() == leader
    assert set(leases.writes) == {leader}, "the standby never wrote the Lease"
    standby = b if leader == "a" else a
    assert standby.changes == [] and standby.elector.holder == leader
    assert leases.leases["berth-system/berth"]["spec"]["leaseDurationSeconds"] == 1


async def test_standby_takes_over_after_the_lease_duration_not_before(two: tuple[FakeLeases, Replica, Replica]) -> None:
    leases, a, b = two
    a.start()
    await until(a.elector.is_leader, 3, "a to lead")
    b.start()
    await asyncio.sleep(0.3)
    assert not b.elector.is_leader()
    await a.stop()  # killed: no release, the Lease still names it
    killed = time.monotonic()
    await until(b.elector.is_leader, 3, "b to take over")
    took = time.monotonic() - killed
    assert 0.6 <= took <= 1.0 + 0.5, f"took over after {took:.2f}s with a 1 s lease"
    assert leases.holder() == "b"
    assert leases.leases["berth-system/berth"]["spec"]["leaseTransitions"] == 1


async def test_release_hands_over_at_once(two: tuple[FakeLeases, Replica, Replica]) -> None:
    leases, a, b = two
    a.start()
    await until(a.elector.is_leader, 3, "a to lead")
    b.start()
    await asyncio.sleep(0.2)
    await a.stop(release=True)
    assert a.changes == [True, False]
    took = await until(b.elector.is_leader, 3, "b to take over")
    assert took < 0.5, f"a released Lease took {took:.2f}s to change hands"
    assert leases.holder() == "b"


async def test_a_stale_resource_version_loses_the_race(fake: tuple[FakeLeases, str]) -> None:
    """Both read the expired Lease; both try to replace it; only the first write wins."""
    leases, url = fake
    a, b = Replica(url, "a"), Replica(url, "b")
    try:
        assert await a.elector.try_acquire_or_renew()
        await a.stop()
        leases.leases["berth-system/berth"]["spec"]["holderIdentity"] = ""  # free for all
        leases.frozen = orjson.loads(orjson.dumps(leases.leases["berth-system/berth"]))  # both read this
        got = await asyncio.gather(a.elector.try_acquire_or_renew(), b.elector.try_acquire_or_renew())
        assert sorted(got) == [False, True]
        assert leases.conflicts == 1
    finally:
        await a.close()
        await b.close()


async def test_leader_that_cannot_renew_steps_down(two: tuple[FakeLeases, Replica, Replica]) -> None:
    leases, a, _ = two
    a.start()
    await until(a.elector.is_leader, 3, "a to lead")
    leases.fail = True
    await until(lambda: not a.elector.is_leader(), 3, "a to step down")
    took = time.monotonic() - a.elector._renewed
    # Not before its renew deadline (0.6 s) after the last renew, and before a standby could take over
    # (the lease, 1 s, counted from when the standby saw that renew: later still).
    assert 0.6 <= took < 1.0, took
    assert a.changes == [True, False]
    leases.fail = False
    await until(a.elector.is_leader, 3, "a to lead again")


async def test_view(fake: tuple[FakeLeases, str]) -> None:
    _, url = fake
    a = Replica(url, "a", lease_name="writer", lease_namespace="ns1")
    try:
        assert await a.elector.try_acquire_or_renew()
        assert a.elector.view() == {
            "enabled": True,
            "leader": True,
            "identity": "a",
            "holder": "a",
            "lease": "ns1/writer",
        }
    finally:
        await a.close()


def test_default_identity_is_unique_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "berth-7d9f-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "team-ns")
    one = LeaderElector(None, LeaderElectionConfig())  # type: ignore[arg-type]  # no call is made
    two = LeaderElector(None, LeaderElectionConfig())  # type: ignore[arg-type]
    assert one.identity.startswith("berth-7d9f-abcde_") and one.identity != two.identity
    assert one.namespace == "team-ns"


# -- what the Lease gates ---------------------------------------------------------------------------------
def test_gpu_seconds_counted_only_while_leading() -> None:
    state = demo_cluster(nodes=50)
    m = Metrics()
    leading = [True]
    m.counts_showback = lambda: leading[0]

    def total() -> float:
        return sum(
            s.value
            for metric in m.registry.collect()
            if metric.name == "berth_team_gpu_seconds"
            for s in metric.samples
            if s.name.endswith("_total")
        )

    account_gpu_seconds(state, m, 2.0)
    counted = total()
    assert counted > 0, "the demo cluster holds GPUs"
    leading[0] = False
    account_gpu_seconds(state, m, 2.0)
    assert total() == counted, "the standby must not count"
    leading[0] = True
    account_gpu_seconds(state, m, 1.0)
    assert total() == pytest.approx(counted * 1.5)


class FakeStatusApi:
    def __init__(self) -> None:
        self.patches: list[str] = []

    async def patch_status(self, path: str, status: dict[str, Any]) -> None:
        self.patches.append(path.rsplit("/", 1)[-1])


async def test_status_written_only_while_leading() -> None:
    config = Config()
    config.quotas.status_interval_seconds = 0.01
    state = ClusterState(config)
    state.apply_team(
        "ADDED",
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "TeamQuota",
            "metadata": {"name": "team-a", "generation": 1},
            "spec": {"namespaces": ["a"], "resources": {"nvidia.com/gpu": {"guaranteed": 8}}},
        },
    )
    state.mark_synced("all")
    api = FakeStatusApi()
    leading = [False]
    writer = StatusWriter(api, state, lambda: leading[0])  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(0.1)
        assert api.patches == [], "the standby wrote TeamQuota status"
        leading[0] = True
        await until(lambda: api.patches == ["team-a"], 2, "the leader to write team-a's status")
        leading[0] = False
        await asyncio.sleep(0.05)
        leading[0] = True  # leading again: writes again, from what the informer read, not from its memory
        await until(lambda: api.patches == ["team-a", "team-a"], 2, "a second write after a new term")
    finally:
        task.cancel()


# -- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("leader_election: {enabled: 1}", "leader_election.enabled: expected bool, got 1"),
        (
            "leader_election: {lease_duration_seconds: 0}",
            "leader_election.lease_duration_seconds: expected a value from 1 to 3600, got 0",
        ),
        (
            "leader_election: {renew_deadline_seconds: 15}",
            "leader_election: expected retry_period_seconds < renew_deadline_seconds < lease_duration_seconds, "
            "got 2.0, 15.0, 15",
        ),
        (
            "leader_election: {retry_period_seconds: 10}",
            "leader_election: expected retry_period_seconds < renew_deadline_seconds < lease_duration_seconds, "
            "got 10.0, 10.0, 15",
        ),
        ("leader_election: {lease_name: 3}", "leader_election.lease_name: expected str, got 3"),
    ],
)
def test_bad_leader_election_keys(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "berth.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == error


def test_leader_election_keys_load(tmp_path: Path) -> None:
    path = tmp_path / "berth.yaml"
    path.write_text(
        "leader_election: {enabled: false, lease_duration_seconds: 4, renew_deadline_seconds: 3,"
        " retry_period_seconds: 1}"
    )
    le = load_config(path).leader_election
    assert (le.enabled, le.lease_duration_seconds, le.renew_deadline_seconds, le.retry_period_seconds) == (
        False,
        4,
        3.0,
        1.0,
    )
    assert Config().leader_election.enabled is True


async def test_loop_survives_any_client_error(
    two: tuple[FakeLeases, Replica, Replica], caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's ServerDisconnectedError is no OSError: the loop must neither die (a dead loop would leave a
    leader that believes it leads) nor log it every retry."""
    _, a, _ = two
    a.start()
    await until(a.elector.is_leader, 3, "a to lead")
    real = a.client.request

    async def disconnected(*args: Any, **kwargs: Any) -> tuple[int, bytes]:
        raise aiohttp.ServerDisconnectedError()

    a.client.request = disconnected  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="berth.leader"):
        await until(lambda: not a.elector.is_leader(), 3, "a to step down")
        await asyncio.sleep(0.3)
    assert a.task is not None and not a.task.done(), "the election loop ended"
    warned = [r for r in caplog.records if "cannot be read or written" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    a.client.request = real  # type: ignore[method-assign]
    await until(a.elector.is_leader, 3, "a to lead again")
