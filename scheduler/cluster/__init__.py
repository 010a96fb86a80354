"""The cluster as Berth knows it: the kube client, informers, the node table, the pod ledger and its
reservations, ClusterState (owned by the event loop) and the TeamQuota status writer.

May import `model`, `kernels`, `gpu` (the topology codec) and `policy.quotas` (the quota book the
ledger feeds); never `extender` or `observability` handlers.
"""
