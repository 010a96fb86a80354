"""What a bind names: kube-scheduler's ExtenderBindingArgs as a plain value.

Here, at the bottom, because the extender parses it, the binder decides on it and the kube client
writes it: none of those rooms should import another for a four-field record.
"""

from dataclasses import dataclass


@dataclass(slots=True)
class BindingArgs:
    name: str
    namespace: str
    uid: str
    node: str


class BindConflict(Exception):
    """The API server refused a Binding with 409 Conflict: the pod is bound already (maybe by an earlier
    try of ours whose reply was lost). The binder decides what that means; the client only reports it."""
