#!/usr/bin/env python3
"""`make cluster`: a local control plane, Berth (live mode, its own ServiceAccount) and a second
kube-scheduler whose only profile is berth-scheduler, with a few dozen kubelet-less GPU nodes, to try
by hand. Runs until Ctrl-C (or SIGTERM), then stops everything and removes its temporary directory.

    .venv/bin/python scripts/cluster.py --port 8888 [--api-port N] [--etcd-port N] [--etcd-peer-port N]

Dev tooling, not a test: it reuses the end-to-end harness (tests/e2e/harness.py) and the one object
factory, so it runs from a source checkout only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/cluster.py`: the harness comes from the checkout
    sys.path.insert(0, str(ROOT))

from tests.e2e import harness as h  # noqa: E402
from tests.e2e.objects import node  # noqa: E402

# The GPU pools of the demo cluster (scheduler/demo.py) and of deploy/examples/teamquotas.yaml, which
# this script applies; the CPU nodes are pool "shared". tests/test_loadtests.py keeps the three agreeing.
POOLS = [
    ("a100", "NVIDIA-A100-SXM4-80GB", [[0, 1, 2, 3, 4, 5, 6, 7]]),
    ("a100-pcie", "NVIDIA-A100-PCIE-40GB", [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("h100", "NVIDIA-H100-80GB-HBM3", [[0, 1, 2, 3, 4, 5, 6, 7]]),
    ("inference", "NVIDIA-L4", [[i] for i in range(8)]),
]
TEAMQUOTAS = ROOT / "deploy" / "examples" / "teamquotas.yaml"
EXAMPLE_POD = """apiVersion: v1
kind: Pod
metadata: {name: trainer, namespace: ml-research, annotations: {berth.dev/topology: preferred}}
spec:
  schedulerName: berth-scheduler
  containers:
  - name: main
    image: registry.k8s.io/pause:3.10
    resources: {requests: {cpu: "2", memory: 8Gi}, limits: {nvidia.com/gpu: "2"}}
"""


class Stopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: unwind through the `finally`s that stop the processes."""


def _stop(signum: int, _frame: object) -> None:
    for sig in STOP_SIGNALS:  # a second signal must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


# SIGINT too: a shell that starts this in the background ignores SIGINT, and a closed terminal sends SIGHUP.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8888, help="Berth's port (make cluster PORT=...; default 8888)")
    parser.add_argument("--api-port", type=int, help="kube-apiserver's port (API_PORT=...; default: a free one)")
    parser.add_argument("--etcd-port", type=int, help="etcd's client port (ETCD_PORT=...; default: a free one)")
    parser.add_argument("--etcd-peer-port", type=int, help="etcd's peer port (ETCD_PEER_PORT=...; default: a free one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, kubeconfigs) on exit")
    return parser.parse_args(argv)


def cluster_nodes() -> list[dict[str, object]]:
    nodes = [node(f"cpu-{i:02d}", "cluster", cpu="32", memory="128Gi", pool="shared") for i in range(12)]
    for pool, model, islands in POOLS:
        nodes += [
            node(f"{pool}-{i:02d}", "cluster", cpu="96", memory="1Ti", gpus=8, model=model, pool=pool, islands=islands)
            for i in range(8)
        ]
    return nodes


def example_namespaces(teams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The namespaces the example TeamQuotas name, and for a namespaceSelector one that it selects
    (named after the team, labelled with matchLabels and the first value of each `In` expression)."""
    out: dict[str, dict[str, str]] = {}
    for team in teams:
        spec = team["spec"]
        for name in spec.get("namespaces") or []:
            out.setdefault(name, {})
        selector = spec.get("namespaceSelector")
        if selector:
            labels = dict(selector.get("matchLabels") or {})
            labels |= {
                e["key"]: e["values"][0] for e in selector.get("matchExpressions") or [] if e["operator"] == "In"
            }
            out[team["metadata"]["name"]] = labels
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": v}} for n, v in out.items()]


def example_teams() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(TEAMQUOTAS.read_text()) if doc]


def apply_teams(cp: h.ControlPlane) -> None:
    cp.apply(example_namespaces(example_teams()))
    cp.kubectl("apply", "-f", str(TEAMQUOTAS))


def control_plane(args: argparse.Namespace, workdir: Path) -> h.ControlPlane:
    cp = h.ControlPlane(workdir)
    # The harness picks free ports; a port asked for on the command line replaces its pick.
    cp.api_port = args.api_port or cp.api_port
    cp.etcd_port = args.etcd_port or cp.etcd_port
    cp.peer_port = args.etcd_peer_port or cp.peer_port
    return cp


def banner(cp: h.ControlPlane, port: int, nodes: int) -> str:
    kubectl = f"{cp.bin / 'kubectl'} --kubeconfig {cp.admin_kubeconfig}"
    return f"""
Local cluster up: kube-apiserver {cp.url}, Berth http://127.0.0.1:{port}, {nodes} nodes (no kubelets),
pools shared (CPU), {", ".join(p for p, _, _ in POOLS)}; the TeamQuotas of {TEAMQUOTAS.relative_to(ROOT)}.
  export KUBECONFIG={cp.admin_kubeconfig}
  alias kubectl='{cp.bin / "kubectl"}'
  {kubectl} get nodes -L berth.dev/pool,nvidia.com/gpu.product
  {kubectl} get teamquotas
  {kubectl} apply -f {cp.dir / "trainer.yaml"}     # a 2-GPU pod of ml-research, schedulerName: berth-scheduler
  {kubectl} get pod -n ml-research trainer -o wide
  {Path(sys.executable).parent / "berth"} explain --url http://127.0.0.1:{port} -n ml-research trainer
The nodes have no kubelet, so a pod bound to one never runs and a plain delete waits for a kubelet that
never answers: delete pods with `kubectl delete pod NAME --force --grace-period=0`.
Logs: {cp.dir}/*.log. Ctrl-C stops everything and removes {cp.dir}."""


def teams_table(cp: h.ControlPlane) -> str:
    """`kubectl get teamquotas` once Berth has written every team's status (or as it is after 20 s)."""

    def written() -> str | None:
        out = cp.kubectl("get", "teamquotas", "-o", "jsonpath={range .items[*]}{.status.pods}{' '}{end}").stdout
        return None if len(out.split()) < len(example_teams()) else cp.kubectl("get", "teamquotas").stdout

    try:
        return str(h.wait_until(written, 20, "TeamQuota status"))
    except TimeoutError:
        return cp.kubectl("get", "teamquotas").stdout


def serve(args: argparse.Namespace, cp: h.ControlPlane) -> int:
    """Start everything on `cp` and wait for a process that exits (1), or until a stop signal."""
    cp.start()
    berth_kc = cp.install_berth_identity()
    nodes = cluster_nodes()
    cp.kubectl("create", "-f", "-", input="\n".join(json.dumps(n) for n in nodes))
    apply_teams(cp)
    procs = [h.start_berth(cp, berth_kc, args.port)]
    try:
        h.wait_ready(f"http://127.0.0.1:{args.port}", procs[0])
        cfg = h.scheduler_config(
            cp, cp.dir / "berth-scheduler.yaml", f"http://127.0.0.1:{args.port}", "berth-scheduler"
        )
        procs.append(h.start_scheduler(cp, "kube-scheduler-berth", cfg))
        (cp.dir / "trainer.yaml").write_text(EXAMPLE_POD)
        print(banner(cp, args.port, len(nodes)), flush=True)
        print(teams_table(cp), flush=True)
        while all(p.alive for p in procs):
            time.sleep(1)
        dead = [p for p in procs if not p.alive]
        for p in dead:
            print(f"{p.name} exited:\n{p.tail()}", file=sys.stderr)
        return 1 if dead else 0
    finally:
        for p in reversed(procs):
            p.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="berth-cluster-"))
    cp = control_plane(args, workdir)
    code = 0
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    try:
        code = serve(args, cp)
    except Stopped:
        pass
    finally:
        cp.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
