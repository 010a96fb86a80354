"""`berth agent`: the node agent, one per GPU node (a DaemonSet, deploy/components/agent).

It owns what only the node knows: the GPU topology (NVML through scheduler/gpu/nvml.py, the
`nvidia-smi topo -m` parser as the fallback), written to the node's berth.dev/gpu-topology annotation,
and which devices each container really got (the kubelet's PodResources API, `kubelet.py`, stubs
generated from the real proto in `podresources/v1/`), written as the node's berth.dev/gpu-assigned
annotation (codec: scheduler/gpu/assignments.py) that the ledger prefers over Berth's own plan
(scheduler/cluster/truth.py). docs/devices.md explains the chain.

Imports `model`, `gpu` and `cluster.kube` (the API client) only; nothing imports it but `cli`.
"""
