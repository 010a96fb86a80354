"""The one Node/Pod factory, re-exported for tests: it lives in `scheduler.cluster.objects` because the
embedded demo cluster builds its objects with it at run time."""

from scheduler.cluster.objects import READY, SCHEDULER, container, node, pod, resources

__all__ = ["READY", "SCHEDULER", "container", "node", "pod", "resources"]
