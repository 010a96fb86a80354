"""Annotation, label and resource names Berth reads or writes: the one place each is spelled."""

# Resources.
GPU = "nvidia.com/gpu"
GPU_SHARED = "nvidia.com/gpu.shared"  # the device plugin's replicas with renameByDefault: true
MIG_PREFIX = "nvidia.com/mig-"  # MIG profiles (mixed strategy): nvidia.com/mig-1g.10gb, ...

# Node labels and annotations.
LABEL_POOL = "berth.dev/pool"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"  # NVIDIA GPU feature discovery
LABEL_GPU_COUNT = "nvidia.com/gpu.count"  # GFD: physical GPUs on the node
LABEL_GPU_REPLICAS = "nvidia.com/gpu.replicas"  # GFD: replicas per GPU (time-slicing or MPS), 1 when not shared
LABEL_GPU_SHARING = "nvidia.com/gpu.sharing-strategy"  # GFD: none | time-slicing | mps
SHARED_PRODUCT_SUFFIX = "-SHARED"  # GFD appends it to gpu.product on shared GPUs (without renameByDefault)
ANN_GPU_TOPOLOGY = "berth.dev/gpu-topology"  # the node's NVLink islands, written by `berth topology`
ANN_GPU_ASSIGNED = "berth.dev/gpu-assigned"  # the GPUs each pod on the node really holds, by `berth agent`
ANN_LOAD = "berth.dev/load"  # 0..1, kept by a metrics pipeline
ANN_LOAD_TIME = "berth.dev/load-time"  # RFC 3339: when ANN_LOAD was measured
# Upcoming maintenance: the annotation holds when it starts (RFC 3339; "now" or any other value: as soon as
# possible); the label (label values hold no time) with any value means as soon as possible. Long-running
# pods score such nodes down (docs/scoring.md, the maintenance part).
ANN_MAINTENANCE = "berth.dev/maintenance"
LABEL_MAINTENANCE = "berth.dev/maintenance"

# Pod annotations a user sets.
ANN_GPU_MODELS = "berth.dev/gpu-models"  # acceptable GPU models, comma-separated
ANN_TOPOLOGY_POLICY = "berth.dev/topology"  # none | preferred | required
ANN_GPU_FRACTION = "berth.dev/gpu-fraction"  # of one GPU: "0.5", "500m"; on nodes that offer replicas
# How long the pod runs at most, in seconds ("3600") or as a Go duration ("90m", "2h"); spec.activeDeadlineSeconds
# says the same. A pod with neither is long-running (the maintenance part).
ANN_EXPECTED_RUNTIME = "berth.dev/expected-runtime"

# Pod annotations Berth writes at bind.
ANN_TEAM = "berth.dev/team"
ANN_BORROWING = "berth.dev/borrowing"
ANN_GPU_IDS = "berth.dev/gpu-ids"  # the device indices the pod was given, "0,1,5"
ANN_GPU_MILLI = "berth.dev/gpu-milli"  # a fraction's share of its one device in milli, "250"

# Gangs (scheduler/admission/): how users name a gang, and what Berth writes while admitting one.
LABEL_POD_GROUP = "scheduling.x-k8s.io/pod-group"  # scheduler-plugins' PodGroup membership (Kubeflow, KubeRay)
ANN_GANG = "berth.dev/gang"  # a gang without CRDs: its name, on every member
ANN_GANG_SIZE = "berth.dev/gang-size"  # minMember of an annotation gang
ANN_GANG_TOPOLOGY = "berth.dev/gang-topology"  # a node label key: the gang stays inside one of its values
ANN_GANG_TOPOLOGY_POLICY = "berth.dev/gang-topology-policy"  # required | preferred
ANN_GANG_TIMEOUT = "berth.dev/gang-timeout-seconds"  # scheduleTimeoutSeconds of an annotation gang
ANN_GANG_PLAN = "berth.dev/gang-plan"  # written at ungating: the member's planned node
ANN_GANG_ADMITTED = "berth.dev/gang-admitted-at"  # written at ungating: Unix time the gang was admitted
GATE_ADMISSION = "berth.dev/admission"  # the scheduling gate the webhook adds and the admission loop removes
PODGROUP_GROUP = "scheduling.x-k8s.io"
PODGROUP_VERSION = "v1alpha1"
# The upstream gang API (alpha in 1.36: feature gate GenericWorkload, runtime-config scheduling.k8s.io/v1alpha2):
# PodGroup objects (spec.schedulingPolicy.gang.minCount), pods naming theirs in spec.schedulingGroup.podGroupName.
WORKLOAD_GROUP = "scheduling.k8s.io"
WORKLOAD_VERSION = "v1alpha2"
