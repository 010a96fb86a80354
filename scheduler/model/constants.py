"""Numeric facts the kernels share with the Python around them: the one place each is written.

The Cython kernel reads these too: setup.py executes this file and writes ext/_constants.pxi (one
`cdef enum` of every upper-case integer here), which ext/_native.pyx includes; tests/model/test_constants.py
checks the native module, the twin and this file agree. So keep this file plain assignments, with no
imports: setup.py runs it on its own, before the package is installed.
"""

# ---- the node table -------------------------------------------------------------------------------
# Bits of NodeTable.flags.
FLAG_PRESENT = 1  # the slot holds a node (0 in freed slots)
FLAG_UNSCHEDULABLE = 2  # spec.unschedulable: cordoned

# GPU device masks are 64-bit integers, bit i for GPU i: a node describes at most this many GPUs.
MAX_GPUS = 64
# Island masks kept per node (NodeTable.islands holds MAX_ISLANDS entries per slot; 0 = no island).
MAX_ISLANDS = 8

# GPU sharing: a GPU is 1000 milli in the device ledger (NodeTable.gpu_milli, MAX_GPUS per slot); a
# fraction of one GPU is 1..999 milli, never more than GPU_MILLI held on one device.
GPU_MILLI = 1000
# NodeTable.share_res: which resource a node's replicas are advertised as.
SHARE_GPU = 0  # nvidia.com/gpu (not shared, or time-slicing/MPS replicas without renameByDefault)
SHARE_GPU_SHARED = 1  # nvidia.com/gpu.shared (renameByDefault: true)

# ---- a pod's ask ----------------------------------------------------------------------------------
# The berth.dev/topology policy, as the kernels take it.
TOPOLOGY_NONE = 0
TOPOLOGY_PREFERRED = 1
TOPOLOGY_REQUIRED = 2

# Bounds on one pod's request that keep the kernels' 64-bit sums (and 32-bit GPU counts) from
# overflowing; far above any real pod. MAX_GPU_REQUEST is not MAX_GPUS: it bounds what a pod may ask,
# not what a node has (a pod asking for more than any node has is refused by the filter, with a reason).
MAX_UNITS = 1 << 62
MAX_GPU_REQUEST = 1 << 20

# ---- filter verdicts, in the order the checks run -------------------------------------------------
OK = 0
UNSCHEDULABLE = 1
POOL = 2
MODEL = 3
PODS = 4
CPU = 5
MEMORY = 6
GPU = 7
TOPOLOGY = 8
OTHER_RESOURCE = 20  # set outside the kernels: the node lacks an extended resource the pod asks for
OTHER_RESOURCE_USED = 21  # set outside the kernels: it has enough in all, but pods hold it (MIG profiles, ...)
DRA_DEVICES = 40  # set outside the kernels (policy/devices.py): the node's ResourceSlices have too few devices
DRA_DEVICES_USED = 41  # set outside the kernels: enough devices in all, but other ResourceClaims hold them
DRA_QUOTA = 42  # set outside the kernels: allocating the pod's claims there takes its team over quota
# GPU sharing (filter_shared): codes far from the whole-GPU ones, so other checks can be added there.
SHARE_FULL = 30  # no GPU of the node has the fraction free (partly shared GPUs or an idle one)
SHARE_RESOURCE = 31  # the node does not offer the GPU resource the pod asks (gpu vs gpu.shared)
BETTER_FIT = 9  # set by placement (scoring.filter_best_tier): fits, but outside the best tier of candidates
UNKNOWN = 255  # not a node in the table (never added, or deleted)

# Failed nodes are grouped into at most this many distinct sentences per reply (reason_ids).
MAX_REASONS = 64

# ---- indices into the score params array (policy.placement.score_params builds it) ---------------
W_PACK = 0
W_TOPO = 1
W_LOAD = 2
W_POOL = 3
W_AVAIL = 4
W_RES = 5
MOST_ALLOCATED = 6  # > 0: MostAllocated for pods without GPUs, else LeastAllocated
NOW = 7  # wall time the load annotations are judged against
LOAD_MAX_AGE = 8  # seconds a load annotation stays fresh
W_FRAG = 9  # fragmentation: expected GPUs the placement leaves unusable (policy/demand.py's histogram)
W_SCARCE = 10  # scarcity: keep off GPU models that model-constrained pods need beyond their supply
W_FIT = 11  # best fit: leave the least GPU, CPU and memory free on the node (scaled by the largest node)
# The largest GPU node's GPUs, millicores and bytes of memory (policy.demand fills them): best fit's scale.
MAX_NODE_GPUS = 12
MAX_NODE_CPU = 13
MAX_NODE_MEM = 14
W_MAINT = 15  # maintenance: keep long-running pods off nodes due for maintenance (names.ANN_MAINTENANCE)
# The recent distribution of GPU asks (policy/demand.py), DEMAND_BUCKETS rows of DEMAND_FIELDS values
# from DEMAND_BASE: the bucket's GPUs per pod, its weight (the rows' weights sum to 1), typical millicores
# per GPU and typical bytes of memory per GPU (0: unknown, the node's own ratio stands in), 1 / GPUs.
DEMAND_BASE = 16
DEMAND_BUCKETS = 8  # 1, 2, 4 and 8 GPUs per pod, each split into asks below and above its typical CPU per GPU
DEMAND_FIELDS = 5
D_GPUS = 0
D_WEIGHT = 1
D_CPU = 2
D_MEM = 3
D_INV_GPUS = 4  # 1 / D_GPUS: the kernels multiply, a division per bucket and node costs too much
# Per GPU model id below SCARCITY_MODELS: the constrained pressure on that model, 0..1 (0: none).
SCARCITY_BASE = 56
SCARCITY_MODELS = 32
# When the pod is expected to end (Unix time; 0: not stated, a long-running pod): see the maintenance part.
POD_END = 88
W_SHARE = 89  # share fit: a fraction fills the fullest shared GPU that holds it (the fraction path)
# Scarce models kept for the pods that need them (policy/demand.py): a GPU model whose constrained pressure
# (SCARCITY_BASE) is at least PROTECT_AT is protected; while POD_ANY_MODEL > 0 (the pod accepts any model
# and some model is protected) a node of a protected model ranks below every node of the others.
PROTECT_AT = 90
POD_ANY_MODEL = 91
N_PARAMS = 92
# The fragmentation part counts a free GPU the placement leaves without the CPU or memory to use it this
# many times over (1 + STRAND_EXTRA in all): such a GPU is lost to every ask, a GPU-count fragment only to
# the larger ones.
STRAND_EXTRA = 3

# The config's scoring.weights names and their indices in the params array.
WEIGHT_NAMES = (
    "gpu_packing",
    "topology",
    "load",
    "pool",
    "pool_availability",
    "resources",
    "fragmentation",
    "scarcity",
    "best_fit",
    "maintenance",
    "share_fit",
)
WEIGHT_INDEX = (W_PACK, W_TOPO, W_LOAD, W_POOL, W_AVAIL, W_RES, W_FRAG, W_SCARCE, W_FIT, W_MAINT, W_SHARE)
