"""Shared test fakes and helpers for the unit tests, the end-to-end tests, loadtests/ and scripts/.

Source-tree only (the wheel ships `scheduler` alone):

- `apiserver`: a programmable Kubernetes API server (list pages, watch streams, 410s, bookmarks);
- `ports`: `free_port()`, a free loopback TCP port;
- `objects`: the Node/Pod factory (`scheduler.cluster.objects`, where the demo cluster needs it at
  run time), re-exported for tests.
"""
