"""kube-scheduler's side: the extender wire types and replies, the NodeNames cache, the verbs as
bytes-in/bytes-out functions, the hot-path HTTP/1.1 handler, the aiohttp app and debug views.

May import every room below it (`model`, `kernels`, `cluster`, `policy`, `observability`).
"""
