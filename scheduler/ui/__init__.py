"""The dashboard: `GET /ui`, a read-only page of the cluster's GPUs, teams, queue and explain.

This room owns the compact JSON views the page polls (`views.py`: the GPU map, a node's pods, the teams'
bars and GPU-hours, the queue), their routes and caching (`routes.py`, mounted by extender/http_app.py
next to the /debug views and under the same authentication), and the page itself (`static/`: plain
HTML, CSS and JavaScript shipped as package data; no build step, no vendored library). Explain is the
existing `/debug/explain` (extender/debug.py over policy/placement.explain), which the page calls.

It reads `ClusterState` as extender/debug.py does and writes nothing back: it imports `model`,
`kernels`, `cluster`, `policy` and `observability` (below it), and is imported only by `extender`.
"""
