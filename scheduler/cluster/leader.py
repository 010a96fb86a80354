"""One writer per fact: a coordination.k8s.io/v1 Lease elects the replica that writes TeamQuota status and
counts GPU-seconds. Both replicas keep serving the verbs (only the kube-scheduler that leads its own
lock calls them to bind); only the facts that are summed or written back need a single author.

Why not `kubernetes.leaderelection`: it runs in a thread with the synchronous client and calls back
from there, while Berth is one asyncio loop with its own aiohttp client (KubeClient). The algorithm is
small, so this is client-go's, on KubeClient:
- get the Lease; none: create it (a 409 means another replica created it first);
- held by another and renewed within leaseDurationSeconds: stand by. "Renewed" is judged by when *this*
  process saw the record change (monotonic clock), never by the renewTime written by another clock;
- else (free, expired, or ours): replace it with our holderIdentity and renewTime, sending the
  resourceVersion we read, so of two replicas racing for it exactly one write succeeds (the other 409s);
- a leader that has not renewed for renew_deadline (< leaseDuration) stops acting as leader before any
  standby can take over; on shutdown it hands the Lease back (holder cleared) so the standby need not wait.
"""

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from scheduler.cluster.kube import KubeClient, KubeError, _message
from scheduler.config import LeaderElectionConfig

log = logging.getLogger("berth.leader")
DEFAULT_NAMESPACE = "berth-system"


def default_identity() -> str:
    """The pod's name (or the hostname) and a random suffix: two processes never share an identity, even
    on one host, so a restarted Berth does not take a Lease its predecessor still holds as its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime


class LeaderElector:
    def __init__(
        self, client: KubeClient, config: LeaderElectionConfig, on_change: Callable[[bool], None] | None = None
    ) -> None:
        self.client = client
        self.config = config
        self.name = config.lease_name
        self.namespace = config.lease_namespace or os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE
        self.identity = config.identity or default_identity()
        self.on_change = on_change
        self.leader = False
        self.holder = ""  # the holderIdentity last read
        self.transitions = 0
        self._record: tuple[Any, ...] | None = None  # (holder, renewTime, resourceVersion) last seen
        self._observed = 0.0  # monotonic time that record was first seen
        self._renewed = 0.0  # monotonic time of our last successful acquire or renew
        self._last_error = ""

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}/leases"

    def is_leader(self) -> bool:
        return self.leader

    def view(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "leader": self.leader,
            "identity": self.identity,
            "holder": self.holder,
            "lease": f"{self.namespace}/{self.name}",
        }

    async def run(self) -> None:
        while True:
            try:
                ok = await self.try_acquire_or_renew()
            except Exception as exc:  # any failure (aiohttp's own errors too): this loop must not end
                self._warn(exc)
                ok = False
            else:
                self._last_error = ""
            if not ok and self.leader and time.monotonic() - self._renewed >= self.config.renew_deadline_seconds:
                log.error(
                    "lease %s/%s not renewed for %.1fs: no longer the leader",
                    self.namespace,
                    self.name,
                    time.monotonic() - self._renewed,
                )
                self._set(False)
            await asyncio.sleep(self.config.retry_period_seconds)

    async def try_acquire_or_renew(self) -> bool:
        """One round; True when we hold the Lease after it."""
        status, raw = await self.client.request("GET", f"{self.path}/{quote(self.name)}", timeout=self._timeout)
        if status == 404:
            return await self._create()
        if status != 200:
            raise KubeError(status, _message(raw))
        lease = orjson.loads(raw)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
        now = time.monotonic()
        if record != self._record:
            self._record, self._observed = record, now
        self.holder = holder
        duration = spec.get("leaseDurationSeconds") or self.config.lease_duration_seconds
        if holder and holder != self.identity and now < self._observed + duration:
            self._set(False)
            return False
        return await self._replace(lease, holder)

    async def _create(self) -> bool:
        now = _now()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.config.lease_duration_seconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        status, raw = await self.client.request("POST", self.path, body, timeout=self._timeout)
        if status == 409:
            return False  # another replica created it first; the next round reads it
        if status not in (200, 201):
            raise KubeError(status, _message(raw))
        return self._won(orjson.loads(raw))

    async def _replace(self, lease: dict[str, Any], holder: str) -> bool:
        spec = dict(lease.get("spec") or {})
        now = _now()
        if holder != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(
            {
                "holderIdentity": self.identity,
                "renewTime": now,
                "leaseDurationSeconds": self.config.lease_duration_seconds,
            }
        )
        body = {**lease, "spec": spec}  # metadata.resourceVersion: the optimistic-concurrency precondition
        status, raw = await self.client.request("PUT", f"{self.path}/{quote(self.name)}", body, timeout=self._timeout)
        if status == 409:
            return False  # someone wrote it since we read it
        if status != 200:
            raise KubeError(status, _message(raw))
        return self._won(orjson.loads(raw))

    def _won(self, lease: dict[str, Any]) -> bool:
        spec = lease.get("spec") or {}
        self._record = (spec.get("holderIdentity"), spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
        self._observed = self._renewed = time.monotonic()
        self.holder = self.identity
        self.transitions = int(spec.get("leaseTransitions") or 0)
        self._set(True)
        return True

    async def release(self) -> None:
        """Hand the Lease back on a clean shutdown: the standby takes over at its next retry."""
        if not self.leader:
            return
        self._set(False)
        try:
            status, raw = await self.client.request("GET", f"{self.path}/{quote(self.name)}", timeout=self._timeout)
            if status != 200:
                return
            lease = orjson.loads(raw)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update({"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _now()})
            status, raw = await self.client.request(
                "PUT", f"{self.path}/{quote(self.name)}", lease, timeout=self._timeout
            )
            if status != 200:
                log.warning("lease %s/%s not released: %s", self.namespace, self.name, _message(raw))
        except Exception as exc:  # shutting down: say so and go on
            log.warning("lease %s/%s not released: %s", self.namespace, self.name, exc)

    def _warn(self, exc: Exception) -> None:
        """Once per distinct error, not every retry period (a missing namespace would repeat forever)."""
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_error:
            self._last_error = text
            log.warning(
                "lease %s/%s cannot be read or written, so this replica does not write TeamQuota "
                "status or count GPU-seconds: %s (leader_election.lease_namespace, or "
                "leader_election.enabled: false for a single replica)",
                self.namespace,
                self.name,
                text,
            )

    @property
    def _timeout(self) -> float:
        return self.config.renew_deadline_seconds / 2  # a hung call must not outlast the renew deadline

    def _set(self, leader: bool) -> None:
        if leader == self.leader:
            return
        self.leader = leader
        log.info(
            "%s the writer of lease %s/%s (identity %s)",
            "became" if leader else "no longer",
            self.namespace,
            self.name,
            self.identity,
            extra={"leader": leader},
        )
        if self.on_change is not None:
            self.on_change(leader)


class Elector(Protocol):
    def is_leader(self) -> bool: ...

    def view(self) -> dict[str, Any]: ...

    async def release(self) -> None: ...


class AlwaysLeader:
    """leader_election.enabled: false (one replica): this process writes everything."""

    def is_leader(self) -> bool:
        return True

    def view(self) -> dict[str, Any]:
        return {"enabled": False, "leader": True}

    async def release(self) -> None:
        return None
