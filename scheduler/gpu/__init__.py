"""GPU facts of a node: the berth.dev/gpu-topology annotation codec (read by the node table) and node-side
discovery (the `nvidia-smi topo -m` parser behind `berth topology`).

The codec imports only scheduler.model (no subprocess, no kube client); discovery runs nvidia-smi and
may import the kube client.
"""
