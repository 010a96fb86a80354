"""The mutating admission webhook (/mutate, AdmissionReview v1): adds the scheduling gate
`berth.dev/admission` to pods of Berth's scheduler that belong to a gang (and to every such pod with
`queueing: true`). Gates can only be set at creation, hence a webhook; the admission loop removes them.

The decision reads only the request: no state, no API calls, so it answers in microseconds and a
standby answers exactly as the leader would. A body that is not an AdmissionReview gets 400 and the reason.
"""

import base64
from typing import Any

import orjson

from scheduler.cluster.gangs import membership
from scheduler.model.names import GATE_ADMISSION

API_VERSION = "admission.k8s.io/v1"


class ReviewError(ValueError):
    """The body is not an AdmissionReview this webhook can answer."""


def gate_patch(pod: dict[str, Any], namespace: str, scheduler_name: str, queueing: bool) -> list[dict[str, Any]]:
    """The JSON patch that gates `pod`, or [] when it is not Berth's to gate."""
    spec = pod.get("spec")
    meta = pod.get("metadata")
    if not isinstance(spec, dict) or not isinstance(meta, dict):
        raise ReviewError("request.object is not a Pod with metadata and spec")
    if spec.get("schedulerName") != scheduler_name or spec.get("nodeName"):
        return []  # another scheduler's pod, or one placed by its author (gates are refused with nodeName)
    gates = spec.get("schedulingGates") or []
    if not isinstance(gates, list):
        raise ReviewError("spec.schedulingGates is not a list")
    if any(isinstance(g, dict) and g.get("name") == GATE_ADMISSION for g in gates):
        return []
    if not queueing and not membership({**meta, "namespace": meta.get("namespace") or namespace}, spec).gang:
        return []
    gate = {"name": GATE_ADMISSION}
    if not gates:
        return [{"op": "add", "path": "/spec/schedulingGates", "value": [gate]}]
    return [{"op": "add", "path": "/spec/schedulingGates/-", "value": gate}]


def review(raw: bytes, scheduler_name: str, queueing: bool) -> bytes:
    """AdmissionReview in, AdmissionReview out (raises ReviewError for a bad body)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ReviewError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("kind") != "AdmissionReview":
        raise ReviewError("expected an AdmissionReview object")
    if body.get("apiVersion") != API_VERSION:
        raise ReviewError(f"expected apiVersion {API_VERSION}, got {body.get('apiVersion')!r}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ReviewError("AdmissionReview.request with a uid is required")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    kind = request.get("kind") or {}
    obj = request.get("object")
    if isinstance(kind, dict) and kind.get("kind") == "Pod" and request.get("operation", "CREATE") == "CREATE":
        if not isinstance(obj, dict):
            raise ReviewError("AdmissionReview.request.object must be the Pod")
        patch = gate_patch(obj, str(request.get("namespace") or "default"), scheduler_name, queueing)
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
    return orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
