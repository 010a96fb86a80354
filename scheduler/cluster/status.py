"""Writes TeamQuota status back to the API server: debounced (at most once per interval, and only
what changed) and conflict-safe (a merge patch of the status subresource needs no resourceVersion)."""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from scheduler.cluster.kube import KubeClient, KubeError
from scheduler.cluster.state import ClusterState
from scheduler.observability.showback import team_status

log = logging.getLogger("berth.status")


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new`, of what changed only (empty when nothing did): keys that
    disappeared are set to null, because a merge patch merges maps (a team that stops borrowing must lose
    its `borrowed` entry); lists are sent whole, as a merge patch replaces them."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key in old and old[key] == value:
            continue
        before = old.get(key)
        patch[key] = merge_patch(before, value) if isinstance(value, dict) and isinstance(before, dict) else value
    for key in old.keys() - new.keys():
        patch[key] = None
    return patch


class StatusWriter:
    def __init__(self, client: KubeClient, state: ClusterState, leads: Callable[[], bool] = lambda: True) -> None:
        self.client = client
        self.state = state
        self.leads = leads  # one writer per fact: only the Lease holder writes (scheduler/cluster/leader.py)
        self.written: dict[str, dict[str, Any]] = {}
        self._seen_version = -1

    async def run(self) -> None:
        interval = self.state.config.quotas.status_interval_seconds
        while True:
            await asyncio.sleep(interval)
            if not self.leads():
                # Another replica writes; on taking over, start again from the status the informer read.
                self.written.clear()
                self._seen_version = -1
                continue
            if self.state.quotas.version == self._seen_version or not self.state.ready:
                continue
            self._seen_version = self.state.quotas.version
            await self.flush()

    async def flush(self) -> None:
        for name, team in list(self.state.quotas.teams.items()):
            old = self.written.get(name) or team.status or {}
            status = team_status(self.state, team, old)
            patch = merge_patch(old, status)
            if not patch:  # what the API server holds already (after a restart: what the object says)
                self.written[name] = status
                continue
            try:
                await self.client.patch_status(f"/apis/berth.dev/v1alpha1/teamquotas/{name}", patch)
                self.written[name] = status
                log.debug("status of TeamQuota %s written", name, extra={"team": name})
            except (KubeError, OSError, TimeoutError) as exc:
                log.warning("status of TeamQuota %s not written: %s", name, exc, extra={"team": name})
                self._seen_version = -1  # try again next round
        for name in set(self.written) - set(self.state.quotas.teams):
            del self.written[name]
