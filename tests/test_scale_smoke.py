"""loadtests/scale.py at a small size: a real Berth process lists 200 nodes and 2,000 pods page by page from
the replay server (everything replayed, no API server needed) and holds them all; /readyz turns 200.
Only counts are asserted, never timings."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODES, PODS = 200, 2000


def _load_scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("berth_scale_script", ROOT / "loadtests" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


scale = _load_scale()


def _replay() -> Any:  # a scale.ReplayServer (the module is loaded from its path)
    lists = {
        "/api/v1/nodes": scale.dumps_all(scale.node_object(i) for i in range(NODES)),
        "/api/v1/namespaces": scale.dumps_all(scale.namespace_object(k) for k in range(scale.NAMESPACES)),
        "/apis/berth.dev/v1alpha1/teamquotas": scale.dumps_all(scale.teamquota_object(t) for t in range(scale.TEAMS)),
        "/api/v1/pods": scale.pod_items(PODS, NODES, 4),
    }
    kinds = {
        "/api/v1/nodes": "NodeList",
        "/api/v1/namespaces": "NamespaceList",
        "/apis/berth.dev/v1alpha1/teamquotas": "TeamQuotaList",
        "/api/v1/pods": "PodList",
    }
    return scale.ReplayServer(lists, kinds)


async def test_berth_holds_every_replayed_node_and_pod(tmp_path: Path) -> None:
    replay = await _replay().start()
    try:
        kubeconfig = scale.write_kubeconfig(tmp_path / "replay.kubeconfig", replay.url, "smoke-token")
        sync = await scale.measure_sync(kubeconfig, tmp_path / "berth.log", timeout=90, settle=0.2)
    finally:
        await replay.stop()
    held = sync.state
    assert held["ready"] is True and sync.seconds > 0  # measure_sync returns once /readyz said 200
    assert (held["nodes"], held["pods"], held["teams"]) == (NODES, PODS, scale.TEAMS), held
    assert held["informers"]["pods"]["resourceVersion"] == scale.LIST_RV
    assert replay.pages_by_path["/api/v1/pods"] == PODS // 500, "the pods must come page by page (limit=500)"
    assert sync.rss_mb > 0 and set(sync.listed) == {"nodes", "namespaces", "teamquotas", "pods"}
