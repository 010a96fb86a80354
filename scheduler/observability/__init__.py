"""What Berth tells people: Prometheus metrics, JSON-lines logs, showback (GPU-seconds, team rows).

May import `model`, `cluster` and `policy.quotas` to read them; nothing here changes state.
"""
