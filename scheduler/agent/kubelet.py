"""The kubelet's PodResources API v1 (a gRPC service on a unix socket): which devices each container holds.

Every call carries a deadline. A failed call drops the channel, so the next one dials the socket again:
a restarting kubelet removes and recreates the socket, and a channel bound to the old one would only
ever see UNAVAILABLE. The agent's loop (agent/run.py) spaces the retries with a backoff.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import grpc

from scheduler.agent.podresources.v1 import api_pb2, api_pb2_grpc
from scheduler.gpu.assignments import Assignments, build
from scheduler.model.names import GPU, GPU_SHARED, MIG_PREFIX

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
# The kubelet's own limit for these replies (pkg/kubelet/apis/podresources: 16 MiB); a node at its pod
# limit answers in a few hundred KiB.
MAX_MESSAGE = 16 << 20

_REPLICA = re.compile(r"^(.+?)::\d+$")  # time-slicing / MPS replicas: <device id>::<replica>
_MIG_LEGACY = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/\d+/\d+$")  # drivers before R470: MIG-GPU-<uuid>/<gi>/<ci>
_INDEX = re.compile(r"^(\d+)(?::\d+)?$")  # deviceIDStrategy=index: "3", MIG "3:1"


class PodResourcesError(RuntimeError):
    """The kubelet did not answer (socket missing, kubelet restarting, deadline passed)."""


class PodResourcesClient:
    def __init__(self, socket: str = DEFAULT_SOCKET, deadline: float = 10.0) -> None:
        self.socket = socket
        self.deadline = deadline
        self._channel: grpc.aio.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None

    def _lister(self) -> api_pb2_grpc.PodResourcesListerStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix://{self.socket}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.enable_retries", 0)],
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    async def list(self) -> api_pb2.ListPodResourcesResponse:
        try:
            return await self._lister().List(api_pb2.ListPodResourcesRequest(), timeout=self.deadline)
        except grpc.aio.AioRpcError as exc:
            await self.close()
            raise PodResourcesError(f"List: {exc.code().name}: {exc.details()}") from None

    async def allocatable(self) -> api_pb2.AllocatableResourcesResponse:
        try:
            request = api_pb2.AllocatableResourcesRequest()
            return await self._lister().GetAllocatableResources(request, timeout=self.deadline)
        except grpc.aio.AioRpcError as exc:
            await self.close()
            raise PodResourcesError(f"GetAllocatableResources: {exc.code().name}: {exc.details()}") from None

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()


def is_gpu_resource(name: str) -> bool:
    return name in (GPU, GPU_SHARED) or name.startswith(MIG_PREFIX)


def device_index(device_id: str, uuid_index: Mapping[str, int]) -> int | None:
    """The GPU index behind one device ID the NVIDIA device plugin reported; None if it names no GPU here."""
    replica = _REPLICA.match(device_id)
    if replica:
        device_id = replica.group(1)
    legacy = _MIG_LEGACY.match(device_id)
    if legacy:
        device_id = legacy.group(1)
    if device_id in uuid_index:
        return uuid_index[device_id]
    by_index = _INDEX.match(device_id)
    if by_index and int(by_index.group(1)) in uuid_index.values():
        return int(by_index.group(1))
    return None


def assignments(
    reply: api_pb2.ListPodResourcesResponse, uuid_index: Mapping[str, int]
) -> tuple[Assignments, list[str]]:
    """The node's snapshot: GPU indices per pod, DRA devices per pod; and the device IDs it could not map."""
    pods: dict[str, set[int]] = {}
    dra: dict[str, set[str]] = {}
    unmapped: list[str] = []
    for pod in reply.pod_resources:
        key = f"{pod.namespace}/{pod.name}"
        for container in pod.containers:
            for ids in _gpu_ids(container.devices):
                index = device_index(ids, uuid_index)
                if index is None:
                    unmapped.append(ids)
                else:
                    pods.setdefault(key, set()).add(index)
            for claim in container.dynamic_resources:
                for res in claim.claim_resources:
                    dra.setdefault(key, set()).add(f"{res.driver_name}/{res.pool_name}/{res.device_name}")
    return build(pods, dra), unmapped


def _gpu_ids(devices: Iterable[api_pb2.ContainerDevices]) -> Iterable[str]:
    for dev in devices:
        if is_gpu_resource(dev.resource_name):
            yield from dev.device_ids


def allocatable_gpus(reply: api_pb2.AllocatableResourcesResponse) -> dict[str, int]:
    """Device IDs the kubelet can hand out, per GPU resource name (shown on the agent's /debug)."""
    out: dict[str, int] = {}
    for dev in reply.devices:
        if is_gpu_resource(dev.resource_name):
            out[dev.resource_name] = out.get(dev.resource_name, 0) + len(dev.device_ids)
    return out
