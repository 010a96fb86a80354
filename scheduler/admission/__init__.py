"""Gangs and the queue: all-or-nothing admission of multi-pod jobs (docs/gangs.md).

Owns: the mutating webhook that gates Berth's pods (`webhook.py`), the planner that finds a node for
every member at once with Berth's own kernels (`planner.py`), and the admission loop that, in the
leader only, ungates a gang whose members all exist, whose team quota admits the whole gang and for
which a plan exists now, writing the plan on the pods and holding its capacity (`loop.py`). The gang
table itself is state, kept by `cluster/gangs.py` and fed by the informers like the rest.

May import: `model`, `kernels`, `cluster`, `policy`, `observability` (it sits beside `policy`, below
`extender`; `extender/verbs.py` reads only what it leaves in ClusterState: `plans` and `gangs`).
"""
