"""GPU discovery through NVML (nvidia-ml-py's `pynvml` module): what `berth agent` publishes.

NVLink islands come from NVML's P2P status over NVLink between every pair of GPUs (connected components,
as in discovery.py: NCCL routes through peers); NVSwitch from the far end of each active NVLink (a switch,
not a GPU). Per GPU the inventory keeps UUID (what the device plugin reports to the kubelet, mapped back
to Berth's indices), name, memory, PCI bus id, NUMA node and MIG devices. The `nvml` argument is the
module, so tests pass a stand-in with the same function names (tests/fakes/nvml.py) that replays
recorded answers; `discover()` raises NvmlUnavailable when there is no library or driver, and the
caller falls back to `nvidia-smi topo -m` (scheduler/gpu/discovery.py).

Indices are NVML's, which are nvidia-smi's and the device plugin's order (PCI bus order): the order
`berth.dev/gpu-ids` and the topology annotation use.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import orjson

from scheduler.gpu.topology import Topology, linked_groups
from scheduler.model.constants import MAX_GPUS

_MIG_PROFILE = re.compile(r"\bMIG\s+(\S+)")
_NVLINK_DEVICE_TYPE_SWITCH = 2  # NVML_NVLINK_DEVICE_TYPE_SWITCH, for bindings that lack the name


class NvmlUnavailable(RuntimeError):
    """No NVML here (library missing, driver not loaded): use the nvidia-smi fallback or report no GPUs."""


@dataclass(frozen=True)
class MigDevice:
    uuid: str
    profile: str  # "1g.10gb", from the MIG device's name
    memory_mib: int


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_mib: int
    pci_bus_id: str
    numa: int | None  # None where NVML cannot say (single-socket boxes, old drivers)
    mig_enabled: bool = False
    mig: tuple[MigDevice, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """What NVML says about one node's GPUs."""

    gpus: tuple[Gpu, ...]
    topology: Topology
    source: str = "nvml"  # nvml | nvidia-smi
    uuid_index: dict[str, int] = field(default_factory=dict, compare=False)  # GPU and MIG UUIDs -> GPU index

    def annotation(self) -> str:
        """The berth.dev/gpu-topology value: islands and links (what Berth places by), plus per-GPU facts
        the codec accepts and ignores today (NUMA, memory, MIG profiles: for people and future rules).
        Only stable facts: nothing that changes while the node runs, so re-publishing stays rare."""
        doc: dict[str, Any] = {"islands": self.topology.islands, "links": self.topology.links}
        if self.gpus:
            doc["numa"] = [g.numa for g in self.gpus]
            doc["gpus"] = [_gpu_doc(g) for g in self.gpus]
        return orjson.dumps(doc).decode()


def _gpu_doc(g: Gpu) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": g.name, "memoryMiB": g.memory_mib, "pci": g.pci_bus_id}
    if g.mig_enabled:
        doc["mig"] = sorted(m.profile for m in g.mig)
    return doc


def load(module: str = "pynvml") -> ModuleType:
    """The binding (nvidia-ml-py's pynvml, or a stand-in with its names: `berth agent --nvml-module`);
    NvmlUnavailable when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NvmlUnavailable(f"{module} cannot be imported (is nvidia-ml-py installed?): {exc}") from None


def discover(nvml: ModuleType) -> Inventory:
    """Read the node's GPUs. Init and shutdown are paired here: the agent holds no NVML state between
    reads, so a driver reload between two reads is seen, not crashed into."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML cannot start: {exc}") from None
    try:
        return _read(nvml)
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _read(nvml: ModuleType) -> Inventory:
    count = int(nvml.nvmlDeviceGetCount())
    if count > MAX_GPUS:
        raise NvmlUnavailable(f"NVML reports {count} GPUs; at most {MAX_GPUS} are supported")
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    gpus = tuple(_gpu(nvml, i, h) for i, h in enumerate(handles))
    islands = _islands(nvml, handles)
    links = _links(nvml, handles, islands, {g.pci_bus_id for g in gpus})
    uuid_index = {g.uuid: g.index for g in gpus}
    for g in gpus:
        uuid_index.update({m.uuid: g.index for m in g.mig})
    return Inventory(gpus, Topology(count, islands, links), "nvml", uuid_index)


def _text(value: Any) -> str:
    # nvidia-ml-py before 11.515 returned bytes; later versions str.
    return value.decode() if isinstance(value, bytes) else str(value)


def _gpu(nvml: ModuleType, index: int, handle: Any) -> Gpu:
    mig_on, mig = _mig(nvml, handle)
    return Gpu(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // (1 << 20),
        pci_bus_id=_bus_id(nvml.nvmlDeviceGetPciInfo(handle)),
        numa=_numa(nvml, handle),
        mig_enabled=mig_on,
        mig=mig,
    )


def _bus_id(info: Any) -> str:
    # NVML pads the domain to 8 hex digits ("00000000:07:00.0"); lower-case for comparisons.
    return _text(info.busId).lower()


def _numa(nvml: ModuleType, handle: Any) -> int | None:
    getter = getattr(nvml, "nvmlDeviceGetNumaNodeId", None)  # NVML 12.x; older drivers: not supported
    if getter is None:
        return None
    try:
        node = int(getter(handle))
    except nvml.NVMLError:
        return None
    return node if node >= 0 else None


def _mig(nvml: ModuleType, handle: Any) -> tuple[bool, tuple[MigDevice, ...]]:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:  # not a MIG-capable GPU
        return False, ()
    if current != nvml.NVML_DEVICE_MIG_ENABLE:
        return False, ()
    devices = []
    for i in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except nvml.NVMLError:  # an empty slot: fewer instances than the maximum
            continue
        name = _text(nvml.nvmlDeviceGetName(mig))
        found = _MIG_PROFILE.search(name)
        devices.append(
            MigDevice(
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                profile=found.group(1) if found else name,
                memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(mig).total) // (1 << 20),
            )
        )
    return True, tuple(devices)


def _islands(nvml: ModuleType, handles: list[Any]) -> tuple[tuple[int, ...], ...]:
    return linked_groups(len(handles), lambda i, j: _nvlink_p2p(nvml, handles[i], handles[j]))


def _nvlink_p2p(nvml: ModuleType, a: Any, b: Any) -> bool:
    try:
        status = nvml.nvmlDeviceGetP2PStatus(a, b, nvml.NVML_P2P_CAPS_INDEX_NVLINK)
    except nvml.NVMLError:
        return False
    return bool(status == nvml.NVML_P2P_STATUS_OK)


def _links(nvml: ModuleType, handles: list[Any], islands: tuple[tuple[int, ...], ...], gpu_buses: set[str]) -> str:
    if all(len(g) == 1 for g in islands):
        return "pcie"
    # The codec's rule: "nvswitch" only for one island of every GPU (a partly fenced fabric is nvlink).
    if len(islands) == 1 and any(_to_switch(nvml, h, gpu_buses) for h in handles):
        return "nvswitch"
    return "nvlink"


def _to_switch(nvml: ModuleType, handle: Any, gpu_buses: set[str]) -> bool:
    """Some active NVLink of this GPU ends at an NVSwitch rather than at another GPU."""
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                continue
        except nvml.NVMLError:  # past the GPU's last link, or NVLink not supported
            break
        kind = getattr(nvml, "nvmlDeviceGetNvLinkRemoteDeviceType", None)
        if kind is not None:
            try:
                switch = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", _NVLINK_DEVICE_TYPE_SWITCH)
                return bool(kind(handle, link) == switch)
            except nvml.NVMLError:
                pass  # older drivers: compare the far end's PCI address with the GPUs'
        try:
            remote = _bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link))
        except nvml.NVMLError:
            continue
        return remote not in gpu_buses
    return False
