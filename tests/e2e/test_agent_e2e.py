"""`berth agent` against the real kube-apiserver, with its own ServiceAccount (deploy/components/agent, a token
bound to a pod on its node, the own-node ValidatingAdmissionPolicy applied), a kubelet-shaped PodResources
server on a unix socket (tests/fakes/kubelet.py, from the real proto: no kubelet runs here) and NVML answers
replayed from a fixture (no GPU here). Berth and the real kube-scheduler place a pod; the fake kubelet then
reports other GPUs than Berth planned at bind: Berth's ledger takes the reported ones, counts the mismatch,
writes an event on the pod, and the next pod is placed by the GPUs really free. The agent survives a
kubelet restart (socket removed and recreated)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kclient

from tests.e2e import harness as h
from tests.e2e.conftest import BerthHandle
from tests.e2e.objects import create_namespace, create_nodes, delete_nodes, node, pod
from tests.e2e.test_live_cluster import wait_bound
from tests.fakes.nvml import FakeNVML

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "deploy" / "components" / "agent"
GROUP = "agent-e2e"
NODE = "agent-n1"
UUIDS = [g["uuid"] for g in FakeNVML.fixture("nvlink-2x4").doc["gpus"]]


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)  # the fake kubelet reads it on every call: never half a file


def _kubelet_state(pods: dict[str, list[int]], namespace: str) -> dict[str, Any]:
    return {
        "pods": [
            {
                "namespace": namespace,
                "name": name,
                "containers": [
                    {"name": "main", "devices": [{"resource": "nvidia.com/gpu", "ids": [UUIDS[i] for i in ids]}]}
                ],
            }
            for name, ids in pods.items()
        ],
        "allocatable": [{"resource": "nvidia.com/gpu", "ids": UUIDS}],
    }


@pytest.fixture(scope="module")
def agent_kubeconfig(cp: h.ControlPlane, api: kclient.CoreV1Api) -> Iterator[Path]:
    """The component's RBAC and admission policy, and a token bound to a pod on NODE (as the DaemonSet's)."""
    create_nodes(api, [node(NODE, GROUP, gpus=8), node("agent-other", f"{GROUP}-other", gpus=8)])
    cp.kubectl("apply", "-f", str(COMPONENT / "namespace.yaml"))
    cp.kubectl("apply", "-f", str(COMPONENT / "rbac.yaml"))
    cp.kubectl("apply", "-f", str(COMPONENT / "node-restriction.yaml"))
    holder = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "berth-agent-e2e", "namespace": "berth-node"},
        "spec": {
            "serviceAccountName": "berth-agent",
            "automountServiceAccountToken": False,
            "nodeName": NODE,
            "containers": [{"name": "agent", "image": "berth:0.1.0"}],
        },
    }
    cp.apply([holder])
    uid = cp.kubectl("get", "pod", "-n", "berth-node", "berth-agent-e2e", "-o", "jsonpath={.metadata.uid}").stdout
    token = cp.kubectl(
        "create",
        "token",
        "berth-agent",
        "-n",
        "berth-node",
        "--duration=2h",
        "--bound-object-kind=Pod",
        "--bound-object-name=berth-agent-e2e",
        f"--bound-object-uid={uid}",
    ).stdout.strip()
    yield cp.write_kubeconfig(cp.dir / "berth-agent.kubeconfig", token)
    cp.kubectl(
        "delete",
        "pod",
        "-n",
        "berth-node",
        "berth-agent-e2e",
        "--grace-period=0",
        "--force",
        "--wait=false",
        check=False,
    )
    cp.kubectl("delete", "-f", str(COMPONENT / "node-restriction.yaml"), check=False)
    delete_nodes(api, GROUP)
    delete_nodes(api, f"{GROUP}-other")


def test_the_agent_may_write_only_its_nodes_annotations(cp: h.ControlPlane, agent_kubeconfig: Path) -> None:
    def patch(name: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return cp.kubectl(
            "patch", "node", name, "--type=merge", "-p", json.dumps(body), kubeconfig=agent_kubeconfig, check=False
        )

    ok = patch(NODE, {"metadata": {"annotations": {"berth.dev/gpu-assigned": '{"pods":{}}'}}})
    assert ok.returncode == 0, ok.stderr

    def other_refused() -> subprocess.CompletedProcess[str] | None:
        other = patch("agent-other", {"metadata": {"annotations": {"berth.dev/gpu-assigned": '{"pods":{}}'}}})
        return other if other.returncode != 0 else None

    # A just-created ValidatingAdmissionPolicy is enforced once the API server's policy informer has it
    # (about a second, longer on a loaded machine): until then RBAC alone (nodes patch) lets the write in.
    other = h.wait_until(other_refused, 30, "the node-restriction policy to refuse another node's write", every=0.5)
    assert "only the Node its pod runs on" in other.stderr
    label = patch(NODE, {"metadata": {"labels": {"berth.dev/pool": "stolen"}}})
    assert label.returncode != 0 and "only the annotations" in label.stderr
    foreign = patch(NODE, {"metadata": {"annotations": {"berth.dev/load": "0"}}})
    assert foreign.returncode != 0
    for verb, resource in (("list", "nodes"), ("get", "pods"), ("create", "events")):
        can = cp.kubectl("auth", "can-i", verb, resource, kubeconfig=agent_kubeconfig, check=False)
        assert can.stdout.strip() == "no", (verb, resource)


def test_a_planted_mismatch_is_corrected_counted_and_placement_follows(
    cp: h.ControlPlane,
    api: kclient.CoreV1Api,
    berth: BerthHandle,
    berth_scheduler: h.Proc,
    agent_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ns = create_namespace(api, f"agent-{int(time.time())}")
    work = tmp_path_factory.mktemp("agent")
    sock, state = work / "kubelet.sock", work / "kubelet.json"
    _write(state, _kubelet_state({}, ns))
    kubelet_args = [sys.executable, "-m", "tests.fakes.kubelet", "--socket", str(sock), "--state", str(state)]
    kubelet = h.Proc("fake-kubelet", kubelet_args, cp.dir).start()
    h.wait_until(sock.exists, 30, "fake kubelet socket")
    port = h.free_port()
    agent = h.Proc(
        "berth-agent",
        [
            sys.executable,
            "-m",
            "scheduler",
            "agent",
            "--node",
            NODE,
            "--socket",
            str(sock),
            "--kubeconfig",
            str(agent_kubeconfig),
            "--port",
            str(port),
            "--poll-seconds",
            "0.5",
            "--min-write-seconds",
            "0.5",
            "--nvml-module",
            "tests.fakes.nvml_replay",
        ],
        cp.dir,
        env={"BERTH_NVML_FIXTURE": "nvlink-2x4"},
    ).start()
    try:
        # The topology the agent read from NVML reaches Berth's node table through the Node.
        h.wait_until(lambda: berth.node(NODE)["islands"] == [[0, 1, 2, 3], [4, 5, 6, 7]], 30, "topology published")
        api.create_namespaced_pod(ns, pod("pair", GROUP, gpus=2))
        assert wait_bound(api, ns, "pair") == NODE
        planned = api.read_namespaced_pod("pair", ns).metadata.annotations["berth.dev/gpu-ids"]
        assert planned in ("0,1", "4,5", "2,3", "6,7")
        # What the device plugin really gave: GPUs of the other island.
        real = [4, 5] if planned.split(",")[0] in "0123" else [0, 1]
        before = berth.metric("berth_gpu_assignment_mismatch_total")
        _write(state, _kubelet_state({"pair": real}, ns))
        truth = ",".join(map(str, real))
        h.wait_until(lambda: berth.node(NODE)["gpuIdsUsed"] == truth, 30, "Berth's ledger takes the report")
        assert berth.metric("berth_gpu_assignment_mismatch_total") == before + 1
        recent = berth.get("/debug/state")["gpuAssignment"]["recent"]
        assert {"pod": f"{ns}/pair", "node": NODE, "planned": planned, "reported": truth} in recent

        def mismatch_event() -> bool:
            events = api.list_namespaced_event(ns, field_selector="involvedObject.name=pair").items
            return any(e.reason == "GPUAssignmentMismatch" for e in events)

        h.wait_until(mismatch_event, 30, "a GPUAssignmentMismatch event on the pod")
        # Placement follows the real holding: a 4-GPU pod inside one island gets the island left free.
        api.create_namespaced_pod(ns, pod("quad", GROUP, gpus=4, annotations={"berth.dev/topology": "required"}))
        assert wait_bound(api, ns, "quad") == NODE
        quad = api.read_namespaced_pod("quad", ns).metadata.annotations["berth.dev/gpu-ids"]
        assert quad == ("0,1,2,3" if real == [4, 5] else "4,5,6,7")
        # A kubelet restart: the socket goes away and comes back; the agent keeps going and reports again.
        kubelet.stop()
        h.wait_until(lambda: not sock.exists(), 10, "socket removed")
        time.sleep(1.0)
        assert agent.alive
        quad_ids = [int(i) for i in quad.split(",")]
        _write(state, _kubelet_state({"pair": real, "quad": quad_ids}, ns))
        kubelet = h.Proc("fake-kubelet-2", kubelet_args, cp.dir).start()
        annotation = lambda: (api.read_node(NODE).metadata.annotations or {}).get("berth.dev/gpu-assigned", "")  # noqa: E731
        h.wait_until(lambda: f'"{ns}/quad":"{quad}"' in annotation(), 60, "the agent reports after the restart")
        assert agent.alive
        assert berth.metric("berth_gpu_assignment_mismatch_total") == before + 1  # a matching report: none more
    finally:
        agent.stop()
        kubelet.stop()
        for p in api.list_namespaced_pod(ns).items:
            api.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)
