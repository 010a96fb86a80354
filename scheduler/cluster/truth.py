"""Device truth: what `berth agent` says each pod really holds (the node's berth.dev/gpu-assigned), and the
mismatches with Berth's own plan (berth.dev/gpu-ids).

Berth's choice at bind is a plan: no stock device plugin reads it (docs/devices.md). The ledger prefers
a reported assignment; ClusterState applies it (`apply_node`, `apply_pod`) and this module keeps the
reports, counts the mismatches and queues one event per mismatch for the leader to write
(`MismatchEvents`). Bounded: one report per node, the last few hundred mismatches.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from scheduler.gpu.assignments import AssignmentError, Assignments, parse
from scheduler.model.constants import MAX_GPUS
from scheduler.model.names import ANN_GPU_ASSIGNED

log = logging.getLogger("berth.truth")

RECENT = 256  # mismatches kept for /debug/state
PENDING_EVENTS = 1024  # events waiting for the leader; beyond it the oldest are dropped (the count stays exact)


def _ids(mask: int) -> str:
    return ",".join(str(i) for i in range(MAX_GPUS) if mask >> i & 1)


@dataclass(frozen=True)
class Mismatch:
    key: str
    uid: str
    node: str
    planned: int  # device mask Berth held
    reported: int  # device mask the node reported

    def message(self) -> str:
        return (
            f"berth: the node reports GPUs {_ids(self.reported) or 'none'} for this pod, Berth had planned "
            f"{_ids(self.planned) or 'none'}; Berth's ledger now counts the reported GPUs"
        )

    def view(self) -> dict[str, Any]:
        return {"pod": self.key, "node": self.node, "planned": _ids(self.planned), "reported": _ids(self.reported)}


class DeviceTruth:
    def __init__(self) -> None:
        self.reports: dict[str, Assignments] = {}
        self.errors: dict[str, str] = {}  # node -> why its annotation was not read
        self.mismatches = 0
        self.recent: deque[Mismatch] = deque(maxlen=RECENT)
        self.pending: deque[Mismatch] = deque(maxlen=PENDING_EVENTS)

    def node_report(self, name: str, node: dict[str, Any] | None) -> bool:
        """Read the node's annotation; True when its report changed (the ledger then corrects the node)."""
        raw = (((node or {}).get("metadata") or {}).get("annotations") or {}).get(ANN_GPU_ASSIGNED)
        before = self.reports.get(name)
        if raw is None:
            self.reports.pop(name, None)
            self.errors.pop(name, None)
            return before is not None
        try:
            report = parse(raw)
        except AssignmentError as exc:
            if self.errors.get(name) != str(exc):
                log.warning("node %s: %s; its GPUs are counted from Berth's plan", name, exc)
            self.errors[name] = str(exc)
            self.reports.pop(name, None)
            return before is not None
        self.errors.pop(name, None)
        self.reports[name] = report
        return report != before

    def forget(self, name: str) -> None:
        self.reports.pop(name, None)
        self.errors.pop(name, None)

    def reported(self, node: str, key: str) -> int | None:
        report = self.reports.get(node)
        return report.mask(key) if report is not None else None

    def record(self, mismatch: Mismatch) -> None:
        self.mismatches += 1
        self.recent.append(mismatch)
        self.pending.append(mismatch)
        log.warning("pod %s on %s: %s", mismatch.key, mismatch.node, mismatch.message())

    def view(self) -> dict[str, Any]:
        return {
            "reportingNodes": len(self.reports),
            "unreadableReports": dict(list(self.errors.items())[:20]),
            "mismatches": self.mismatches,
            "recent": [m.view() for m in list(self.recent)[-20:]],
        }


class MismatchEvents:
    """Writes one Warning event per mismatch on the pod, in the elected leader only (the standby's queue
    is dropped: the leader sees the same reports and writes the same events)."""

    def __init__(self, client: Any, truth: DeviceTruth, leads: Callable[[], bool], every: float = 2.0) -> None:
        self.client = client  # scheduler.cluster.kube.KubeClient
        self.truth = truth
        self.leads = leads
        self.every = every

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            if not self.leads():
                self.truth.pending.clear()
                continue
            while self.truth.pending:
                await self.write(self.truth.pending.popleft())

    async def write(self, m: Mismatch) -> None:
        namespace, name = m.key.split("/", 1)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": m.uid},
            "reason": "GPUAssignmentMismatch",
            "message": m.message(),
            "type": "Warning",
            "source": {"component": "berth", "host": m.node},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            status, raw = await self.client.request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body)
            if status >= 300:
                log.debug("mismatch event refused (%s): %s", status, raw[:200])
        except Exception as exc:  # events are information: never stop the writer for one
            log.debug("mismatch event not written: %s", exc)
