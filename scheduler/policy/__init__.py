"""Decisions: quota admission (quotas), filter and score over the node table (placement), which victims
preemption may take (preempt), and bind's assume-then-write (binder).

May import `model`, `kernels`, `cluster`; never `extender` (the wire format) or the HTTP layer.
"""
