"""/mutate: gang members and (with queueing) every pod of Berth's scheduler get the gate; others pass
untouched; a body that is not an AdmissionReview is a 400 with the reason."""

import base64

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scheduler.admission.http import admission_app
from scheduler.admission.loop import AdmissionLoop
from scheduler.admission.webhook import ReviewError, review
from scheduler.model.names import GATE_ADMISSION, LABEL_POD_GROUP
from tests.admission.helpers import gang_state, member


def ask(pod: dict, operation: str = "CREATE") -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "r-1",
                "kind": {"kind": "Pod"},
                "operation": operation,
                "namespace": "ml",
                "object": pod,
            },
        }
    )


def patch_of(raw: bytes) -> list | None:
    resp = orjson.loads(raw)["response"]
    assert resp["uid"] == "r-1" and resp["allowed"] is True
    return orjson.loads(base64.b64decode(resp["patch"])) if "patch" in resp else None


def test_gang_member_gets_the_gate() -> None:
    pod = member("a-0", "a", 2, gated=False)
    assert patch_of(review(ask(pod), "berth-scheduler", False)) == [
        {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": GATE_ADMISSION}]}
    ]


def test_podgroup_label_counts_and_other_gates_are_kept() -> None:
    pod = member("a-0", "a", 2, gated=False)
    del pod["metadata"]["annotations"]
    pod["metadata"]["labels"] = {LABEL_POD_GROUP: "job"}
    pod["spec"]["schedulingGates"] = [{"name": "example.com/other"}]
    assert patch_of(review(ask(pod), "berth-scheduler", False)) == [
        {"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": GATE_ADMISSION}}
    ]


def test_single_pods_only_with_queueing_and_never_other_schedulers() -> None:
    pod = member("solo", "x", 1, gated=False)
    del pod["metadata"]["annotations"]
    assert patch_of(review(ask(pod), "berth-scheduler", False)) is None
    assert patch_of(review(ask(pod), "berth-scheduler", True)) is not None
    pod["spec"]["schedulerName"] = "default-scheduler"
    assert patch_of(review(ask(pod), "berth-scheduler", True)) is None
    gated = member("g", "a", 2, gated=True)
    assert patch_of(review(ask(gated), "berth-scheduler", True)) is None, "gated already: no second gate"
    assert patch_of(review(ask(member("u", "a", 2, gated=False), "UPDATE"), "berth-scheduler", True)) is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not JSON"),
        (b"[]", "AdmissionReview"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"x"}}', "v1"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}', "uid"),
        (
            b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1",'
            b'"request":{"uid":"x","kind":{"kind":"Pod"},"object":{"spec":[]}}}',
            "Pod",
        ),
    ],
)
def test_bad_bodies_say_why(body: bytes, words: str) -> None:
    with pytest.raises(ReviewError, match=words):
        review(body, "berth-scheduler", False)


async def test_http_400_with_reason() -> None:
    state = gang_state()
    app = admission_app(state.config.admission, AdmissionLoop(state, None, lambda: True))
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/mutate", data=b"{}")
        assert r.status == 400 and "AdmissionReview" in (await r.json())["error"]
        r = await client.post("/mutate", data=ask(member("a-0", "a", 2, gated=False)))
        assert r.status == 200 and patch_of(await r.read())
        r = await client.get("/debug/queue")
        assert r.status == 200 and (await r.json())["policy"].startswith("StrictFIFO")
        assert r.headers["Server"] == "berth"  # no software version named (aiohttp's default does)
