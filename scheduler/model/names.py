"""Annotation, label and resource names Berth reads or writes: the one place each is spelled."""

# Resources.
GPU = "nvidia.com/gpu"

# Node labels and annotations.
LABEL_POOL = "berth.dev/pool"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"  # NVIDIA GPU feature discovery
ANN_GPU_TOPOLOGY = "berth.dev/gpu-topology"  # the node's NVLink islands, written by `berth topology`
ANN_LOAD = "berth.dev/load"  # 0..1, kept by a metrics pipeline
ANN_LOAD_TIME = "berth.dev/load-time"  # RFC 3339: when ANN_LOAD was measured

# Pod annotations a user sets.
ANN_GPU_MODELS = "berth.dev/gpu-models"  # acceptable GPU models, comma-separated
ANN_TOPOLOGY_POLICY = "berth.dev/topology"  # none | preferred | required

# Pod annotations Berth writes at bind.
ANN_TEAM = "berth.dev/team"
ANN_BORROWING = "berth.dev/borrowing"
ANN_GPU_IDS = "berth.dev/gpu-ids"  # the device indices the pod was given, "0,1,5"
