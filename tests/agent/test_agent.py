"""The agent against a kubelet-shaped PodResources server (tests/fakes/kubelet.py, from the real proto) on a
unix socket, and NVML answers replayed from fixtures: device IDs mapped to GPU indices, one write per
change, a kubelet restart survived, a node without GPUs kept quiet."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scheduler.agent.kubelet import PodResourcesClient, PodResourcesError, assignments, device_index
from scheduler.agent.podresources.v1 import api_pb2
from scheduler.agent.run import Agent, AgentConfig
from scheduler.gpu import nvml
from scheduler.gpu.assignments import parse
from scheduler.model.names import ANN_GPU_ASSIGNED, ANN_GPU_TOPOLOGY
from tests.fakes.kubelet import FakeKubelet
from tests.fakes.nvml import FakeNVML

DGX = nvml.discover(FakeNVML.fixture("dgx-a100-nvswitch"))  # type: ignore[arg-type]
MIG = nvml.discover(FakeNVML.fixture("a100-mig"))  # type: ignore[arg-type]
U = [g.uuid for g in DGX.gpus]


def gpu_pod(name: str, resource: str, ids: list[str], namespace: str = "ns") -> dict[str, Any]:
    return {
        "namespace": namespace,
        "name": name,
        "containers": [{"name": "main", "devices": [{"resource": resource, "ids": ids}]}],
    }


class Writer:
    def __init__(self, current: dict[str, str] | None = None, fail: bool = False) -> None:
        self.current = dict(current or {})
        self.patches: list[dict[str, str]] = []
        self.fail = fail

    async def annotations(self, node: str) -> dict[str, str]:
        return dict(self.current)

    async def patch(self, node: str, annotations: dict[str, str]) -> None:
        if self.fail:
            raise OSError("HTTP 403")
        self.patches.append(annotations)
        self.current.update(annotations)


@pytest.fixture
def sock(tmp_path: Path) -> str:
    return str(tmp_path / "kubelet.sock")  # unix socket paths are short; tmp_path is


def test_device_ids_of_every_kind_map_to_indices() -> None:
    idx = DGX.uuid_index
    assert device_index(U[3], idx) == 3
    assert device_index(f"{U[5]}::2", idx) == 5  # a time-slicing / MPS replica
    assert device_index("4", idx) == 4  # deviceIDStrategy=index
    assert device_index(f"MIG-{U[2]}/1/0", idx) == 2  # MIG IDs of drivers before R470
    assert device_index("GPU-not-here", idx) is None and device_index("12", idx) is None
    mig = MIG.gpus[0].mig[1]
    assert device_index(mig.uuid, MIG.uuid_index) == 0


def test_assignments_from_a_list_reply() -> None:
    reply = api_pb2.ListPodResourcesResponse()
    for name, res, ids in [
        ("whole", "nvidia.com/gpu", [U[1], U[0]]),
        ("shared", "nvidia.com/gpu.shared", [f"{U[6]}::0", f"{U[6]}::3"]),
        ("nic", "rdma/hca", ["mlx5_0"]),
        ("stray", "nvidia.com/gpu", ["GPU-elsewhere"]),
    ]:
        reply.pod_resources.append(
            api_pb2.PodResources(
                name=name,
                namespace="ns",
                containers=[
                    api_pb2.ContainerResources(
                        name="c", devices=[api_pb2.ContainerDevices(resource_name=res, device_ids=ids)]
                    )
                ],
            )
        )
    report, unmapped = assignments(reply, DGX.uuid_index)
    assert report.pods == {"ns/whole": (0, 1), "ns/shared": (6,)} and unmapped == ["GPU-elsewhere"]


async def test_the_client_survives_a_kubelet_restart(sock: str) -> None:
    kubelet = await FakeKubelet(sock, {"pods": [gpu_pod("a", "nvidia.com/gpu", [U[0]])]}).start()
    client = PodResourcesClient(sock, deadline=5.0)
    try:
        assert [p.name for p in (await client.list()).pod_resources] == ["a"]
        await kubelet.stop()  # the socket is gone
        with pytest.raises(PodResourcesError):
            await client.list()
        kubelet.doc = {"pods": [gpu_pod("b", "nvidia.com/gpu", [U[1]])]}
        await kubelet.start()
        assert [p.name for p in (await client.list()).pod_resources] == ["b"]
    finally:
        await client.close()
        await kubelet.stop()


def config(sock: str, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = {"poll_seconds": 0.01, "min_write_seconds": 0.0, "backoff_max_seconds": 0.05}
    return AgentConfig(node="n1", socket=sock, **(base | kw))


async def test_writes_on_change_only_and_after_a_restart_not_again(sock: str) -> None:
    kubelet = await FakeKubelet(sock, {"pods": [gpu_pod("a", "nvidia.com/gpu", [U[4], U[5]])]}).start()
    writer = Writer()
    agent = Agent(config(sock), writer, PodResourcesClient(sock), discoverer=lambda: DGX)
    try:
        await agent._load_published()
        assert await agent.topology_round() and await agent.kubelet_round()
        assert await agent.topology_round() and await agent.kubelet_round()  # unchanged: no writes
        assert [set(p) for p in writer.patches] == [{ANN_GPU_TOPOLOGY}, {ANN_GPU_ASSIGNED}]
        assert parse(writer.current[ANN_GPU_ASSIGNED]).pods == {"ns/a": (4, 5)}
        assert orjson.loads(writer.current[ANN_GPU_TOPOLOGY])["links"] == "nvswitch"
        kubelet.doc = {"pods": [gpu_pod("a", "nvidia.com/gpu", [U[4], U[5]]), gpu_pod("b", "nvidia.com/gpu", [U[0]])]}
        assert await agent.kubelet_round()
        assert parse(writer.patches[-1][ANN_GPU_ASSIGNED]).pods == {"ns/a": (4, 5), "ns/b": (0,)}
        # A restarted agent reads what the Node holds and writes nothing it already says.
        again = Agent(config(sock), Writer(writer.current), PodResourcesClient(sock), discoverer=lambda: DGX)
        await again._load_published()
        assert await again.topology_round() and await again.kubelet_round()
        assert again.writer.patches == []  # type: ignore[attr-defined]
        await again.kubelet.close()
    finally:
        await agent.kubelet.close()
        await kubelet.stop()


async def test_a_burst_is_one_write_per_interval(sock: str) -> None:
    kubelet = await FakeKubelet(sock, {"pods": []}).start()
    writer = Writer({ANN_GPU_ASSIGNED: '{"pods":{}}'})
    agent = Agent(config(sock, min_write_seconds=3600), writer, PodResourcesClient(sock), discoverer=lambda: DGX)
    agent.state.inventory = DGX
    try:
        await agent._load_published()
        for i in range(5):
            kubelet.doc = {"pods": [gpu_pod(f"p{k}", "nvidia.com/gpu", [U[k]]) for k in range(i + 1)]}
            assert await agent.kubelet_round()
        assert len(writer.patches) == 1  # the first change; the rest wait for the interval
    finally:
        await agent.kubelet.close()
        await kubelet.stop()


async def test_run_survives_a_kubelet_restart_and_serves_health(sock: str) -> None:
    kubelet = await FakeKubelet(sock, {"pods": [gpu_pod("a", "nvidia.com/gpu", [U[2]])]}).start()
    writer = Writer()
    agent = Agent(config(sock), writer, PodResourcesClient(sock, deadline=1.0), discoverer=lambda: DGX)
    task = asyncio.create_task(agent.run())
    http = TestClient(TestServer(agent.app()))
    await http.start_server()

    async def until(cond: Any) -> None:
        for _ in range(500):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")

    try:
        await until(lambda: ANN_GPU_ASSIGNED in writer.current)
        assert (await http.get("/healthz")).status == 200 and (await http.get("/readyz")).status == 200
        assert (await http.get("/healthz")).headers["Server"] == "berth"  # no software version named
        await kubelet.stop()
        await until(lambda: agent.state.kubelet_error is not None)
        assert (await http.get("/readyz")).status == 503 and (await http.get("/healthz")).status == 200
        kubelet.doc = {"pods": [gpu_pod("a", "nvidia.com/gpu", [U[7]])]}
        await kubelet.start()
        await until(lambda: parse(writer.current[ANN_GPU_ASSIGNED]).pods == {"ns/a": (7,)})
        text = await (await http.get("/metrics")).text()
        assert "berth_agent_podresources_up 1.0" in text
        assert 'berth_agent_podresources_errors_total{rpc="' in text  # List or GetAllocatableResources
        assert (await (await http.get("/debug/agent")).json())["gpus"] == 8
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await http.close()
        await agent.kubelet.close()
        await kubelet.stop()


async def test_a_node_without_gpus_writes_nothing(sock: str) -> None:
    kubelet = await FakeKubelet(
        sock, {"pods": [{"namespace": "ns", "name": "web", "containers": [{"name": "c"}]}]}
    ).start()
    writer = Writer()
    agent = Agent(config(sock), writer, PodResourcesClient(sock), discoverer=lambda: None)
    try:
        assert await agent.topology_round() and await agent.kubelet_round()
        assert writer.patches == [] and agent.view()["gpus"] == 0
    finally:
        await agent.kubelet.close()
        await kubelet.stop()


async def test_a_refused_write_is_retried(sock: str) -> None:
    kubelet = await FakeKubelet(sock, {"pods": [gpu_pod("a", "nvidia.com/gpu", [U[0]])]}).start()
    writer = Writer(fail=True)
    agent = Agent(config(sock), writer, PodResourcesClient(sock), discoverer=lambda: DGX)
    agent.state.inventory = DGX
    try:
        assert not await agent.kubelet_round()
        writer.fail = False
        assert await agent.kubelet_round() and parse(writer.current[ANN_GPU_ASSIGNED]).pods == {"ns/a": (0,)}
    finally:
        await agent.kubelet.close()
        await kubelet.stop()


async def test_the_port_answers_a_trickled_head_with_408_at_its_deadline(
    sock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's port is served under the guard (serving/guard.py), as Berth's health port: a client that
    sends a head a line at a time is answered 408 and closed at the deadline (aiohttp alone kept it open,
    unanswered, for as long as it trickled), and a probe is still served."""
    from aiohttp import web

    from scheduler.agent import run

    monkeypatch.setattr(run, "AGENT_REQUEST_TIMEOUT", 0.3)
    agent = Agent(config(sock), Writer(), PodResourcesClient(sock), discoverer=lambda: DGX)
    runner = web.AppRunner(agent.app(), access_log=None)
    await runner.setup()
    server, sweep = await run.listen(runner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = asyncio.create_task(reader.read())  # read as it comes: writes after the close would reset it
        for _ in range(20):  # a field every 0.1 s: never a whole head
            if answer.done():
                break
            writer.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.1)
        try:
            reply = await asyncio.wait_for(answer, 5)
        except ConnectionResetError:  # the 408 went, then the close with our fields unread: a reset may win
            reply = b"HTTP/1.1 408 (reset)"
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:80]
        assert loop.time() - started < 1.5, "closed at the deadline, not after the trickle ended"
        writer.close()
        probe_r, probe_w = await asyncio.open_connection("127.0.0.1", port)
        probe_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(probe_r.read(), 5)).startswith(b"HTTP/1.1 503 ")  # no loop ran: "stalled"
        probe_w.close()
    finally:
        server.close()
        sweep.cancel()
        await runner.cleanup()
        await agent.kubelet.close()
