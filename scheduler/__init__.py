"""Berth: a high-throughput kube-scheduler extender with team quotas and GPU-topology-aware placement."""

__version__ = "0.1.0"
