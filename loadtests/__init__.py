"""Benchmarks and simulators of Berth, run from a source checkout (the wheel ships `scheduler` only).

`berth bench` is `bench` (with `suite`, `wrk`, `procs`, `report` and `objects`); `quality` simulates GPU
placement; `throughput` and `scale` run against a local control plane; `typical_extender` is the
baseline extender and `locustfile` the locust scenario. See loadtests/README.md.
"""
