"""The shipped configurations, read from the repository and adapted only where a local run must differ.

Placement results depend on the extender's weight and settings and on Berth's scoring weights, so the
placement end-to-end test and `make bench-quality-e2e` use what the repository ships, not numbers of
their own:

- kube-scheduler: `config/kube-scheduler.yaml` (the local twin of the deployed
  `deploy/base/config/kube-scheduler-config.yaml`; `extender_settings` checks that the two extenders
  agree). Only the kubeconfig, the extender's port and the profile name change; "alone" drops the
  extender and keeps everything else (percentageOfNodesToScore stays unset, as shipped: adaptive).
- Berth: `deploy/base/config/berth.yaml` (scoring, quotas, bind). Only `server` changes: a free
  loopback port and no health listener, so several runs can share a machine.
"""

from pathlib import Path
from typing import Any

import yaml

from tests.e2e import harness as h

ROOT = h.ROOT
SCHEDULER_CONFIG = ROOT / "config" / "kube-scheduler.yaml"
DEPLOYED_SCHEDULER_CONFIG = ROOT / "deploy" / "base" / "config" / "kube-scheduler-config.yaml"
BERTH_CONFIG = ROOT / "deploy" / "base" / "config" / "berth.yaml"
# What may differ between the local and the deployed extender: where Berth listens.
LOCAL_ONLY = ("urlPrefix",)


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return data


def extender_settings() -> dict[str, Any]:
    """The shipped extender block (weight, nodeCacheCapable, httpTimeout, ignorable, verbs). Raises when
    the local config and the deployed one disagree on anything but the URL: then "shipped" is ambiguous."""
    local = _load(SCHEDULER_CONFIG)["extenders"][0]
    deployed = _load(DEPLOYED_SCHEDULER_CONFIG)["extenders"][0]
    differ = sorted(k for k in set(local) | set(deployed) if k not in LOCAL_ONLY and local.get(k) != deployed.get(k))
    if differ:
        raise ValueError(f"{SCHEDULER_CONFIG} and {DEPLOYED_SCHEDULER_CONFIG} disagree on extender {differ}")
    return dict(local)


def scheduler_config(
    cp: h.ControlPlane, path: Path, scheduler_name: str, berth_url: str | None, percentage: int | None = None
) -> Path:
    """config/kube-scheduler.yaml for this control plane: with berth_url, Berth (at that URL) as its
    extender exactly as shipped; without, kube-scheduler alone (the same file, no extender)."""
    cfg = _load(SCHEDULER_CONFIG)
    cfg["clientConnection"]["kubeconfig"] = str(cp.admin_kubeconfig)
    cfg["leaderElection"] = {"leaderElect": False}
    cfg["profiles"] = [{**cfg["profiles"][0], "schedulerName": scheduler_name}]
    if percentage is not None:
        cfg["percentageOfNodesToScore"] = percentage
    if berth_url:
        cfg["extenders"] = [{**extender_settings(), "urlPrefix": f"{berth_url}/scheduler"}]
    else:
        cfg.pop("extenders", None)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def berth_config(path: Path, port: int) -> Path:
    """deploy/base/config/berth.yaml with only the listener moved to 127.0.0.1:port (no health port)."""
    cfg = _load(BERTH_CONFIG)
    cfg["server"] = {**cfg.get("server", {}), "host": "127.0.0.1", "port": port, "health_port": 0}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def berth_shipped_pool() -> str:
    """The first of the shipped `quotas.shared_pools`: the pool pods of no team may always use."""
    return str(_load(BERTH_CONFIG)["quotas"]["shared_pools"][0])


def berth_scoring() -> dict[str, Any]:
    """The shipped scoring section, for reports."""
    return dict(_load(BERTH_CONFIG).get("scoring", {}))
