"""A bounded, in-process run of scripts/fuzz.py: ~1,500 malformed, truncated, oversized and wrongly-typed
bodies against all four verbs. Every reply is 2xx or 4xx with the verb's shape, and afterwards a valid
filter gets byte for byte the reply it got before. `scripts/fuzz.py --count 100000` is the long version."""

import asyncio
import importlib.util
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from scheduler.admission.http import admission_app
from scheduler.admission.loop import AdmissionLoop
from scheduler.config import Config
from scheduler.model.names import ANN_GANG, LABEL_POD_GROUP
from tests.admission.helpers import gang_state
from tests.conftest import GoWire, berth_client, demo_cluster

LIMIT = 64 * 1024
BATCH = 8
BODIES = 1_600
TIMEOUT = 5.0  # per request: a body that holds the event loop this long is a denial of service


def load_fuzzer() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "scripts" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("berth_fuzz", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["berth_fuzz"] = module
    spec.loader.exec_module(module)
    return module


fuzz = load_fuzzer()


class Target:
    """Berth on a private event loop, driven synchronously so hypothesis can run the test."""

    def __init__(self) -> None:
        config = Config()
        config.server.max_body_bytes = LIMIT
        self.state = demo_cluster(config)
        self.loop = asyncio.new_event_loop()
        self.client: TestClient = self.loop.run_until_complete(self._start())
        self.templates = fuzz.Templates(GoWire(self.state).names())
        self.strategy = st.lists(
            fuzz.bodies(self.templates, LIMIT), min_size=BATCH, max_size=BATCH, unique_by=lambda item: item[1]
        )
        self.tally = fuzz.Tally()
        self.reference = self.send("filter", self.templates.check_request())
        assert self.reference.status == 200 and orjson.loads(self.reference.body)["NodeNames"]

    async def _start(self) -> TestClient:
        client = berth_client(self.state)
        await client.start_server()
        return client

    async def _send(self, verb: str, body: bytes) -> Any:
        r = await self.client.post(f"/scheduler/{verb}", data=body, headers={"Content-Type": "application/json"})
        return fuzz.Reply(r.status, dict(r.headers), await r.read())

    def send(self, verb: str, body: bytes) -> Any:
        started = time.perf_counter()
        try:
            reply = self.loop.run_until_complete(asyncio.wait_for(self._send(verb, body), TIMEOUT))
        except TimeoutError:
            pytest.fail(f"{verb} took over {TIMEOUT} s for a body of {len(body)} bytes: {body[:300]!r}")
        assert time.perf_counter() - started < TIMEOUT
        return reply

    def still_correct(self) -> None:
        again = self.send("filter", self.templates.check_request())
        assert (again.status, again.body) == (self.reference.status, self.reference.body)

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.close()


@settings(
    max_examples=BODIES // BATCH,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_fuzzed_bodies_never_get_5xx(target: Target, data: st.DataObject) -> None:
    for verb, body in data.draw(target.strategy):
        reply = target.send(verb, body)
        target.tally.add(verb, reply)
        problem = fuzz.reply_problem(verb, reply)
        assert problem is None, f"{problem}\n{verb} body ({len(body)} bytes): {body[:500]!r}"
    if sum(target.tally.statuses.values()) % (BATCH * 25) == 0:
        target.still_correct()


def test_still_answers_after_fuzzing(target: Target) -> None:
    target.still_correct()
    seen = Counter(target.tally.statuses)
    if seen:  # the fuzz test ran first: it sent what it should and reached every kind of answer
        assert sum(seen.values()) >= BODIES * 0.9, seen
        assert seen["200"] and seen["400"] and seen["413"], seen
        assert not [s for s in seen if s.startswith("5")], seen


# -- bodies that once broke Berth, sent every run -------------------------------------------------------
def _pod(**spec_changes: object) -> dict[str, object]:
    pod = orjson.loads((fuzz.GO_FIXTURES / "pod-training.json").read_bytes())
    pod["spec"]["containers"][0]["resources"]["requests"].update(spec_changes)
    return pod


REGRESSIONS: list[tuple[str, object]] = [
    *[
        ("filter", {"Pod": _pod(memory=q), "Nodes": None, "NodeNames": ["a"]})
        for q in ("1e999999", "1e300000Ei", "Infinity", "NaN", "1e30", "-1", "1E", "9223372036854775807")
    ],
    *[("prioritize", {"Pod": _pod(cpu=q), "Nodes": None, "NodeNames": ["a"]}) for q in ("1e999999", "NaN", "-5")],
    ("preempt", {"Pod": _pod(cpu="1e999999"), "NodeNameToMetaVictims": {"a": {"Pods": []}}}),
    ("filter", {"Pod": _pod(**{"example.com/fpga": "1"}), "Nodes": None, "NodeNames": ["a"]}),
    (
        "filter",
        {"Pod": {"metadata": {"annotations": {"berth.dev/topology": ["required"]}}, "spec": {}}, "NodeNames": ["a"]},
    ),
    ("filter", {"Pod": {"metadata": {}, "spec": {"containers": [{"resources": "big"}]}}, "NodeNames": ["a"]}),
    ("filter", {"Pod": {"metadata": {}, "spec": {}}, "Nodes": {"items": [{"metadata": ["x"]}]}}),
    ("filter", {"Pod": {"metadata": {}, "spec": {}}, "Nodes": {"items": {}}}),
    ("preempt", {"Pod": {"metadata": {}, "spec": {}}, "NodeNameToVictims": {"a": {"Pods": [{"metadata": "x"}]}}}),
    (
        "preempt",
        {"Pod": {"metadata": {}, "spec": {}}, "NodeNameToVictims": {"a": {"Pods": [], "NumPDBViolations": True}}},
    ),
]


@pytest.mark.parametrize(("verb", "payload"), REGRESSIONS, ids=[f"{v}-{i}" for i, (v, _) in enumerate(REGRESSIONS)])
def test_regressions(target: Target, verb: str, payload: object) -> None:
    reply = target.send(verb, orjson.dumps(payload))
    assert fuzz.reply_problem(verb, reply) is None, reply


# -- the admission webhook: Pods no API server would send ---------------------------------------------------
def _review(pod: object) -> bytes:
    request = {"uid": "r-1", "kind": {"kind": "Pod"}, "operation": "CREATE", "namespace": "ml", "object": pod}
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


ODD_PODS: list[object] = [
    {"metadata": {"labels": {LABEL_POD_GROUP: ["g"]}}, "spec": {"schedulerName": "berth-scheduler"}},
    {"metadata": {"labels": {LABEL_POD_GROUP: {"g": 1}}}, "spec": {"schedulerName": "berth-scheduler"}},
    {"metadata": {"annotations": {ANN_GANG: ["g"]}}, "spec": {"schedulerName": "berth-scheduler"}},
    {
        "metadata": {"labels": {LABEL_POD_GROUP: "g"}, "annotations": ["x"]},
        "spec": {"schedulerName": "berth-scheduler"},
    },
    {"metadata": {"labels": "g", "annotations": 5}, "spec": {"schedulerName": "berth-scheduler"}},
]


@pytest.mark.parametrize("pod", ODD_PODS, ids=range(len(ODD_PODS)))
async def test_odd_pods_at_the_webhook_are_answered_never_500(pod: object) -> None:
    """A gang label or annotation that is not a string (a list, an object), or annotations that are not an
    object: /mutate failed with a 500. Such a value names no gang; a pod allowed, gated where a label does."""
    state = gang_state()
    app = admission_app(state.config.admission, AdmissionLoop(state, None, lambda: True))
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/mutate", data=_review(pod))
        assert r.status == 200, await r.text()
        response = (await r.json())["response"]
        assert response["uid"] == "r-1" and response["allowed"] is True
        assert ("patch" in response) == (pod is ODD_PODS[3]), response  # the one naming its gang by a label
