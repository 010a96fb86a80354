"""The berth.dev/gpu-assigned node annotation: which GPUs each pod on the node really holds.

`berth agent` writes it from the kubelet's PodResources API (scheduler/agent/); the ledger reads it
(scheduler/cluster/truth.py). One compact annotation per node rather than one per pod: docs/devices.md
gives the write rate at 7,500 nodes behind that choice. The value is a snapshot of the node, not a log:

    {"pods": {"<namespace>/<name>": "0,1"}, "dra": {"<namespace>/<name>": ["<driver>/<pool>/<device>"]}}

"pods" lists GPU indices (nvidia-smi order): whole GPUs, the GPU behind a shared replica
(`GPU-<uuid>::<n>`) and the parent GPU of a MIG device. "dra" lists devices DRA drivers prepared, as the
kubelet names them. A pod the kubelet knows with no GPUs is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from scheduler.model.constants import MAX_GPUS
from scheduler.model.names import ANN_GPU_ASSIGNED

# At 110 pods per node (the kubelet's default) and 8 indices each this stays under 6 KiB; the bound keeps
# a broken writer from growing every Node object in the cluster (annotations share a 256 KiB cap).
MAX_PODS = 512


class AssignmentError(ValueError):
    """The annotation cannot be read; the message says what is wrong."""


@dataclass(frozen=True)
class Assignments:
    pods: dict[str, tuple[int, ...]] = field(default_factory=dict)  # pod key -> GPU indices, sorted
    dra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # pod key -> DRA device names, sorted

    def to_annotation(self) -> str:
        doc: dict[str, object] = {"pods": {k: ",".join(map(str, v)) for k, v in sorted(self.pods.items())}}
        if self.dra:
            doc["dra"] = {k: list(v) for k, v in sorted(self.dra.items())}
        return orjson.dumps(doc).decode()

    def mask(self, key: str) -> int | None:
        """The device mask the pod holds; None when the node did not report it."""
        indices = self.pods.get(key)
        if indices is None:
            return None
        mask = 0
        for i in indices:
            mask |= 1 << i
        return mask


def build(pods: Mapping[str, Iterable[int]], dra: Mapping[str, Iterable[str]] | None = None) -> Assignments:
    return Assignments(
        pods={k: tuple(sorted(set(v))) for k, v in pods.items() if v},
        dra={k: tuple(sorted(set(v))) for k, v in (dra or {}).items() if v},
    )


def parse(value: object) -> Assignments:
    if not isinstance(value, str | bytes):
        raise _fail(f"expected a JSON string, got {type(value).__name__}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pods", {}), dict):
        raise _fail('expected {"pods": {"namespace/name": "0,1"}}')
    raw_pods, raw_dra = doc.get("pods", {}), doc.get("dra") or {}
    if not isinstance(raw_dra, dict):
        raise _fail('"dra" must map pod keys to lists of device names')
    if len(raw_pods) > MAX_PODS or len(raw_dra) > MAX_PODS:
        raise _fail(f"more than {MAX_PODS} pods listed")
    pods = {str(k): _indices(k, v) for k, v in raw_pods.items()}
    dra = {str(k): _names(k, v) for k, v in raw_dra.items()}
    return Assignments(pods=pods, dra=dra)


def _fail(message: str) -> AssignmentError:
    return AssignmentError(f"{ANN_GPU_ASSIGNED}: {message}")


def _indices(key: object, raw: object) -> tuple[int, ...]:
    if not isinstance(raw, str):
        raise _fail(f'pod {key}: expected GPU indices as a string like "0,1", got {type(raw).__name__}')
    out = set()
    for part in raw.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= MAX_GPUS:
            raise _fail(f"pod {key}: {part!r} is not a GPU index (0-{MAX_GPUS - 1})")
        out.add(int(part))
    return tuple(sorted(out))


def _names(key: object, raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise _fail(f"pod {key}: DRA devices must be a list of strings")
    return tuple(sorted(set(raw)))
