"""Names and facts every other room shares: annotation and label names, constants (flag bits, verdict
codes, score parameters, limits), Kubernetes quantities and what a pod asks for.

Imports nothing of Berth's: this is the bottom of the dependency order.
"""
