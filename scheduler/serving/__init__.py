"""Serving HTTP under bounds: `guard` (a cap of connections, a deadline for each request and a bound on the
bytes still arriving, for the connections aiohttp serves). Shared by Berth's listeners (app.py, the verb
port's hand-offs) and the node agent's port (agent/run.py).

Imports nothing of Berth's.
"""
