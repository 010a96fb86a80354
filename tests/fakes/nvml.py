"""A stand-in for nvidia-ml-py's `pynvml` module that replays recorded answers (tests/fixtures/nvml/*.json).

No GPU machine was lent to the session that wrote it: the fixtures are hand-built from NVML's documented
answers (the nvml.h reference: P2P status per pair over NVLink, NVLink state and far end per link, MIG
mode and MIG device handles), not captured. The functions carry pynvml's names and signatures, the
constants pynvml's values, and the errors pynvml's classes' shape (NVMLError with `value`), so
scheduler/gpu/nvml.py runs against it unchanged.

A fixture:
    {"gpus": [{"uuid", "name", "memory_total", "pci_bus_id", "numa" (null: not supported),
               "mig": null | {"current": 0|1, "pending": 0|1, "max": 7, "devices": [{"uuid", "name", "memory_total"}]},
               "nvlinks": [{"remote_pci": "...", "remote_type": "gpu" | "switch"}]}],
     "p2p_nvlink": [[i, j], ...]}   # pairs with NVML_P2P_STATUS_OK over NVLink (symmetric)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"

# pynvml's values.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_P2P_CAPS_INDEX_NVLINK = 2
NVML_P2P_STATUS_OK = 0
NVML_P2P_STATUS_NOT_SUPPORTED = 5
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_NVLINK_MAX_LINKS = 18
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_NVLINK_DEVICE_TYPE_GPU = 0
NVML_NVLINK_DEVICE_TYPE_SWITCH = 2


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class NVMLError_NotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_FOUND)


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Pci:
    busId: str


@dataclass(frozen=True)
class _Handle:
    gpu: int
    mig: int = -1  # >= 0: a MIG device of `gpu`


class FakeNVML:
    """One recorded machine. Module-level functions of pynvml are methods here; pass the instance where
    the code takes the module."""

    NVMLError = NVMLError
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, doc: dict[str, Any], fail_init: int | None = None) -> None:
        self.doc = doc
        self.fail_init = fail_init
        self.initialised = 0
        for name, value in globals().items():
            if name.startswith("NVML_"):
                setattr(self, name, value)

    @classmethod
    def fixture(cls, name: str) -> FakeNVML:
        return cls(json.loads((FIXTURES / f"{name}.json").read_text()))

    # -- lifecycle -----------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        if self.fail_init is not None:
            raise NVMLError(self.fail_init)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._ready()
        self.initialised -= 1

    def _ready(self) -> None:
        if self.initialised <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    # -- devices -------------------------------------------------------------------------------------
    def _gpus(self) -> list[dict[str, Any]]:
        self._ready()
        return list(self.doc["gpus"])

    def _gpu(self, h: _Handle) -> dict[str, Any]:
        return self._gpus()[h.gpu]

    def _mig_doc(self, h: _Handle) -> dict[str, Any]:
        return self._gpu(h)["mig"]["devices"][h.mig]

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus())

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self._gpus()):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:
        return str(self._mig_doc(h)["uuid"] if h.mig >= 0 else self._gpu(h)["uuid"])

    def nvmlDeviceGetName(self, h: _Handle) -> str:
        return str(self._mig_doc(h)["name"] if h.mig >= 0 else self._gpu(h)["name"])

    def nvmlDeviceGetMemoryInfo(self, h: _Handle) -> _Memory:
        total = int(self._mig_doc(h)["memory_total"] if h.mig >= 0 else self._gpu(h)["memory_total"])
        return _Memory(total=total, free=total, used=0)

    def nvmlDeviceGetPciInfo(self, h: _Handle) -> _Pci:
        return _Pci(busId=str(self._gpu(h)["pci_bus_id"]))

    def nvmlDeviceGetNumaNodeId(self, h: _Handle) -> int:
        numa = self._gpu(h).get("numa")
        if numa is None:
            raise NVMLError_NotSupported()
        return int(numa)

    def nvmlDeviceGetP2PStatus(self, a: _Handle, b: _Handle, index: int) -> int:
        self._ready()
        if index != NVML_P2P_CAPS_INDEX_NVLINK:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        pairs = {tuple(p) for p in self.doc.get("p2p_nvlink", [])}
        linked = (a.gpu, b.gpu) in pairs or (b.gpu, a.gpu) in pairs
        return NVML_P2P_STATUS_OK if linked else NVML_P2P_STATUS_NOT_SUPPORTED

    def _link(self, h: _Handle, link: int) -> dict[str, Any]:
        links = self._gpu(h).get("nvlinks") or []
        if not links:
            raise NVMLError_NotSupported()
        if not 0 <= link < len(links):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return dict(links[link])

    def nvmlDeviceGetNvLinkState(self, h: _Handle, link: int) -> int:
        return NVML_FEATURE_ENABLED if self._link(h, link).get("active", True) else NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: _Handle, link: int) -> _Pci:
        return _Pci(busId=str(self._link(h, link)["remote_pci"]))

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: _Handle, link: int) -> int:
        kind = self._link(h, link).get("remote_type", "gpu")
        return NVML_NVLINK_DEVICE_TYPE_SWITCH if kind == "switch" else NVML_NVLINK_DEVICE_TYPE_GPU

    # -- MIG -----------------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, h: _Handle) -> list[int]:
        mig = self._gpu(h).get("mig")
        if mig is None:
            raise NVMLError_NotSupported()
        return [int(mig["current"]), int(mig["pending"])]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: _Handle) -> int:
        mig = self._gpu(h).get("mig")
        if mig is None:
            raise NVMLError_NotSupported()
        return int(mig["max"])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: _Handle, index: int) -> _Handle:
        devices = (self._gpu(h).get("mig") or {}).get("devices") or []
        if not 0 <= index < len(devices):
            raise NVMLError_NotFound()
        return _Handle(h.gpu, index)
