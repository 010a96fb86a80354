"""kube-scheduler's side. `wire` (the extender wire types, replies and the NodeNames cache), `verbs`
(the four verbs as bytes-in/bytes-out functions: the hot path), `errors` (their error replies),
`verbs_http` (the hot-path HTTP/1.1 handler), `http_app` (the aiohttp routes and middleware), `debug`
(health, readiness, metrics and /debug views) and `server` (Berth: all of them assembled).

May import every room below it (`model`, `kernels`, `cluster`, `policy`, `observability`).
"""
