"""`make cluster`: a local control plane, Berth (live mode, its own ServiceAccount) and a second
kube-scheduler whose only profile is berth-scheduler, with a few dozen kubelet-less GPU nodes.
Runs until Ctrl-C."""

import signal
import sys
import time

from tests.e2e import harness as h
from tests.e2e.objects import node

POOLS = [("a100", "NVIDIA-A100-SXM4-80GB", [[0, 1, 2, 3, 4, 5, 6, 7]]),
         ("a100-pcie", "NVIDIA-A100-PCIE-40GB", [[0, 1, 2, 3], [4, 5, 6, 7]]),
         ("h100", "NVIDIA-H100-80GB-HBM3", [[0, 1, 2, 3, 4, 5, 6, 7]])]
EXAMPLE_POD = """apiVersion: v1
kind: Pod
metadata: {name: trainer, namespace: default, annotations: {berth.dev/topology: preferred}}
spec:
  schedulerName: berth-scheduler
  containers:
  - name: main
    image: registry.k8s.io/pause:3.10
    resources: {requests: {cpu: "2", memory: 8Gi}, limits: {nvidia.com/gpu: "2"}}
"""


def main() -> int:
    cp = h.ControlPlane().start()
    berth_kc = cp.install_berth_identity()
    nodes = [node(f"cpu-{i:02d}", "cluster", cpu="32", memory="128Gi", pool="shared") for i in range(12)]
    for pool, model, islands in POOLS:
        nodes += [node(f"{pool}-{i:02d}", "cluster", cpu="96", memory="1Ti", gpus=8, model=model, pool=pool,
                       islands=islands) for i in range(8)]
    import json
    cp.kubectl("create", "-f", "-", input="\n".join(json.dumps(n) for n in nodes))
    port = 8888
    berth = h.start_berth(cp, berth_kc, port)
    h.wait_ready(f"http://127.0.0.1:{port}", berth)
    cfg = h.scheduler_config(cp, cp.dir / "berth-scheduler.yaml", f"http://127.0.0.1:{port}", "berth-scheduler")
    sched = h.start_scheduler(cp, "kube-scheduler-berth", cfg)
    (cp.dir / "trainer.yaml").write_text(EXAMPLE_POD)
    kubectl = f"{cp.bin / 'kubectl'} --kubeconfig {cp.admin_kubeconfig}"
    print(f"""
Local cluster up: kube-apiserver {cp.url}, Berth http://127.0.0.1:{port}, {len(nodes)} nodes (no kubelets).
  export KUBECONFIG={cp.admin_kubeconfig}
  alias kubectl='{cp.bin / 'kubectl'}'
  {kubectl} get nodes -L berth.dev/pool,nvidia.com/gpu.product
  {kubectl} apply -f {cp.dir / 'trainer.yaml'}     # a 2-GPU pod with schedulerName: berth-scheduler
  {kubectl} get pod trainer -o wide; curl -s 'http://127.0.0.1:{port}/debug/explain?namespace=default&pod=trainer'
Logs: {cp.dir}/*.log. Ctrl-C stops everything.""", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and berth.alive and sched.alive:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    sched.stop()
    berth.stop()
    cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
