"""A kubelet-shaped PodResources v1 server on a unix socket, built from the real proto (k8s.io/kubelet
pkg/apis/podresources/v1/api.proto, stubs in scheduler/agent/podresources/v1).

No kubelet runs in these tests (the control plane is kube-apiserver and kube-scheduler with kubelet-less
nodes), so this stands in for the one part the agent talks to: the same service, methods and messages,
on a unix socket the way the kubelet serves it. What it answers is a document:

    {"pods": [{"namespace", "name", "containers": [{"name", "devices": [{"resource", "ids": [...]}],
               "dra": [{"claim", "namespace", "driver", "pool", "device"}]}]}],
     "allocatable": [{"resource", "ids": [...]}]}

given in code (`FakeKubelet.doc`) or read from a JSON file on every call (`--state`, so an end-to-end
test changes the node's truth by rewriting the file). `restart()` does what a kubelet restart does to
clients: the socket disappears, and a new server creates it again.

    python -m tests.fakes.kubelet --socket /tmp/x/kubelet.sock --state /tmp/x/state.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc

from scheduler.agent.podresources.v1 import api_pb2, api_pb2_grpc


def _container(doc: dict[str, Any]) -> api_pb2.ContainerResources:
    out = api_pb2.ContainerResources(name=doc.get("name", "main"))
    for dev in doc.get("devices", []):
        out.devices.append(api_pb2.ContainerDevices(resource_name=dev["resource"], device_ids=list(dev["ids"])))
    for claim in doc.get("dra", []):
        out.dynamic_resources.append(
            api_pb2.DynamicResource(
                claim_name=claim.get("claim", "claim"),
                claim_namespace=claim.get("namespace", ""),
                claim_resources=[
                    api_pb2.ClaimResource(
                        driver_name=claim["driver"], pool_name=claim["pool"], device_name=claim["device"]
                    )
                ],
            )
        )
    return out


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    async def List(self, request: Any, context: Any) -> api_pb2.ListPodResourcesResponse:
        self.kubelet.calls["List"] += 1
        doc = self.kubelet.current()
        reply = api_pb2.ListPodResourcesResponse()
        for pod in doc.get("pods", []):
            reply.pod_resources.append(
                api_pb2.PodResources(
                    name=pod["name"],
                    namespace=pod["namespace"],
                    containers=[_container(c) for c in pod.get("containers", [])],
                )
            )
        return reply

    async def GetAllocatableResources(self, request: Any, context: Any) -> api_pb2.AllocatableResourcesResponse:
        self.kubelet.calls["GetAllocatableResources"] += 1
        doc = self.kubelet.current()
        return api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name=d["resource"], device_ids=list(d["ids"]))
                for d in doc.get("allocatable", [])
            ]
        )

    async def Get(self, request: Any, context: Any) -> api_pb2.GetPodResourcesResponse:
        for pod in self.kubelet.current().get("pods", []):
            if pod["name"] == request.pod_name and pod["namespace"] == request.pod_namespace:
                return api_pb2.GetPodResourcesResponse(
                    pod_resources=api_pb2.PodResources(
                        name=pod["name"],
                        namespace=pod["namespace"],
                        containers=[_container(c) for c in pod["containers"]],
                    )
                )
        await context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_namespace}/{request.pod_name} not found")
        raise AssertionError("unreachable")


class FakeKubelet:
    def __init__(self, socket: str | Path, doc: dict[str, Any] | None = None, state: Path | None = None) -> None:
        self.socket = str(socket)
        self.doc = doc or {}
        self.state = state
        self.server: grpc.aio.Server | None = None
        self.calls = {"List": 0, "GetAllocatableResources": 0}

    def current(self) -> dict[str, Any]:
        if self.state is not None:
            try:
                return dict(json.loads(self.state.read_text()))
            except (OSError, ValueError):
                return {}
        return self.doc

    async def start(self) -> FakeKubelet:
        server = grpc.aio.server()
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), server)
        if server.add_insecure_port(f"unix://{self.socket}") == 0:
            raise OSError(f"cannot listen on {self.socket}")
        await server.start()
        self.server = server
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)
            self.server = None
        # The kubelet's socket goes with it (the kubelet removes and recreates it on start).
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    async def restart(self, down_seconds: float = 0.0) -> None:
        await self.stop()
        await asyncio.sleep(down_seconds)
        await self.start()


async def _main(socket: str, state: Path) -> None:
    kubelet = await FakeKubelet(socket, state=state).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await kubelet.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--state", required=True, type=Path)
    args = parser.parse_args()
    asyncio.run(_main(args.socket, args.state))
