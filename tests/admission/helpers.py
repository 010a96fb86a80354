"""A small cluster for the admission tests: GPU nodes in racks, gang members as pending pods."""

from typing import Any

from scheduler.cluster.objects import container, node, pod, resources
from scheduler.cluster.state import ClusterState
from scheduler.config import Config
from scheduler.model.names import ANN_GANG, ANN_GANG_SIZE, ANN_GANG_TOPOLOGY, GATE_ADMISSION


def gang_state(racks: int = 2, per_rack: int = 4, gpus: int = 8, queueing: bool = False) -> ClusterState:
    cfg = Config()
    cfg.admission.enabled = True
    cfg.admission.queueing = queueing
    state = ClusterState(cfg)
    for r in range(racks):
        for i in range(per_rack):
            n = node(
                f"r{r}-n{i}",
                {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(gpus)},
                pool="shared",
                gpu_model="A100",
                labels={"rack": f"rack-{r}"},
            )
            state.apply_node("ADDED", n)
    for res in ("nodes", "pods", "pendingpods"):
        state.mark_synced(res)
    return state


def member(
    name: str,
    gang: str,
    size: int,
    gpus: int = 8,
    ns: str = "ml",
    topology: str = "",
    gated: bool = True,
    created: str = "2026-01-01T00:00:00Z",
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    ann = {ANN_GANG: gang, ANN_GANG_SIZE: str(size), **(extra or {})}
    if topology:
        ann[ANN_GANG_TOPOLOGY] = topology
    spec: dict[str, Any] = {"schedulingGates": [{"name": GATE_ADMISSION}]} if gated else {}
    p = pod(
        name,
        [container("main", "pause", resources("1", "1Gi", gpus))],
        namespace=ns,
        uid=f"uid-{ns}-{name}",
        annotations=ann,
        metadata={"creationTimestamp": created},
        spec=spec,
    )
    return p


def add_gang(state: ClusterState, gang: str, size: int, gpus: int = 8, **kw: Any) -> list[dict[str, Any]]:
    pods = [member(f"{gang}-{i}", gang, size, gpus, **kw) for i in range(size)]
    for p in pods:
        state.apply_pending_pod("ADDED", p)
    return pods
