"""KubeClient against the fake API server (tests/fakes/apiserver.py): the Binding it writes, how it reads a
pod, the headers it sends (and when a rotated token is picked up), and how errors become KubeError."""

import asyncio
import time
from typing import Any

import pytest

from scheduler.cluster.kube import KubeClient, KubeError
from scheduler.demo import make_pod
from scheduler.model.binding import BindConflict, BindingArgs
from tests.fakes.apiserver import PODS, TEAMQUOTAS, FakeApiServer, Json, Raw, Request, Status

ANNOTATIONS = {"berth.dev/gpu-ids": "0,1", "berth.dev/team": "training"}
POD_PATH = "/api/v1/namespaces/ml/pods/job-0"
BINDING_PATH = POD_PATH + "/binding"


def pod(node: str | None = None) -> dict[str, Any]:
    return make_pod("ml", "job-0", node, "1", "1Gi", 2)


def args(node: str = "n1", uid: str = "uid-ml-job-0") -> BindingArgs:
    return BindingArgs(name="job-0", namespace="ml", uid=uid, node=node)


# -- bind --------------------------------------------------------------------------------------------
async def test_bind_writes_a_binding_with_the_annotations_and_the_uid_precondition(
    api: FakeApiServer, kube: KubeClient
) -> None:
    api.put(PODS, pod())
    assert await kube.bind(args(), ANNOTATIONS, timeout=5) == ""

    (req,) = api.calls("create", BINDING_PATH)
    assert req.headers["Content-Type"] == "application/json"
    assert req.json() == {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "job-0", "namespace": "ml", "annotations": ANNOTATIONS, "uid": "uid-ml-job-0"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
    }
    bound = api.store[PODS]["ml/job-0"]
    assert bound["spec"]["nodeName"] == "n1"
    assert bound["metadata"]["annotations"] == ANNOTATIONS


async def test_bind_without_a_uid_sends_no_precondition(api: FakeApiServer, kube: KubeClient) -> None:
    api.put(PODS, pod())
    assert await kube.bind(args(uid=""), {}, timeout=5) == ""
    assert "uid" not in api.calls("create", BINDING_PATH)[0].json()["metadata"]


async def test_a_conflict_is_reported_for_the_binder_to_judge(api: FakeApiServer, kube: KubeClient) -> None:
    """409 (bound already, or a recreated pod's UID precondition): the client says so and decides nothing;
    the binder reads the pod and judges (tests/policy/test_bind.py)."""
    api.put(PODS, pod())  # same name, another uid than the one kube-scheduler bound
    with pytest.raises(BindConflict, match="Precondition failed: UID in precondition: uid-of-the-old-pod"):
        await kube.bind(args(uid="uid-of-the-old-pod"), ANNOTATIONS, timeout=5)
    assert [r.verb for r in api.requests] == ["create"]


async def test_a_binding_refused_for_a_missing_pod(api: FakeApiServer, kube: KubeClient) -> None:
    assert (
        await kube.bind(args(), ANNOTATIONS, timeout=5)
        == 'the API server refused the binding (404): pods "ml/job-0" not found'
    )


async def test_a_bind_past_its_timeout_raises_timeout_error(api: FakeApiServer, kube: KubeClient) -> None:
    async def slow(_: FakeApiServer, __: Request) -> Status:
        await asyncio.sleep(1)
        return Status(500)

    api.on("create", BINDING_PATH, slow)
    with pytest.raises(TimeoutError):
        await kube.bind(args(), ANNOTATIONS, timeout=0.05)


# -- reads and errors -----------------------------------------------------------------------------------
async def test_get_pod_returns_the_object_or_none_when_it_is_gone(api: FakeApiServer, kube: KubeClient) -> None:
    assert await kube.get_pod("ml", "job-0") is None
    api.put(PODS, pod(node="n3"))
    got = await kube.get_pod("ml", "job-0")
    assert got is not None and got["spec"]["nodeName"] == "n3"


async def test_names_are_quoted_in_paths(api: FakeApiServer, kube: KubeClient) -> None:
    assert await kube.get_pod("ml", "a#b") is None
    assert api.requests[-1].path == "/api/v1/namespaces/ml/pods/a#b"  # unquoted, '#' would end the path
    assert api.requests[-1].verb == "get"


@pytest.mark.parametrize(
    "reply, message",
    [
        (
            Status(403, 'pods is forbidden: User "berth" cannot list resource "pods"'),
            'pods is forbidden: User "berth" cannot list resource "pods"',
        ),
        (Json({"kind": "Status", "code": 500}, 500), "{'kind': 'Status', 'code': 500}"),  # no message: the body
        (Raw(b"<html>502 Bad Gateway</html>", 502), "<html>502 Bad Gateway</html>"),  # not JSON: the text
    ],
)
async def test_errors_are_kube_errors_with_the_status_and_the_message(
    api: FakeApiServer, kube: KubeClient, reply: Status | Json | Raw, message: str
) -> None:
    api.on("list", PODS, reply)
    api.on("get", POD_PATH, reply)
    with pytest.raises(KubeError) as listed:
        await kube.get_json(PODS)
    with pytest.raises(KubeError) as got:
        await kube.get_pod("ml", "job-0")
    code = reply.code
    for exc in (listed.value, got.value):
        assert (exc.status, exc.message) == (code, message)
        assert str(exc) == f"{code}: {message}"


async def test_get_json_sends_the_query(api: FakeApiServer, kube: KubeClient) -> None:
    api.put(PODS, pod())
    body = await kube.get_json(PODS, {"limit": "1", "fieldSelector": "spec.nodeName!="})
    assert [i["metadata"]["name"] for i in body["items"]] == ["job-0"]
    assert api.requests[-1].query == {"limit": "1", "fieldSelector": "spec.nodeName!="}


async def test_patch_status_is_a_merge_patch_of_the_status_subresource(api: FakeApiServer, kube: KubeClient) -> None:
    api.put(
        TEAMQUOTAS,
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "TeamQuota",
            "metadata": {"name": "t"},
            "status": {"pods": 1, "used": {"cpu": "1"}},
        },
    )
    await kube.patch_status(TEAMQUOTAS + "/t", {"pods": 2, "used": {"cpu": None}})
    (req,) = api.calls("patch", TEAMQUOTAS + "/t/status")
    assert req.headers["Content-Type"] == "application/merge-patch+json"
    assert req.json() == {"status": {"pods": 2, "used": {"cpu": None}}}
    assert api.store[TEAMQUOTAS]["t"]["status"] == {"pods": 2, "used": {}}

    with pytest.raises(KubeError) as exc:
        await kube.patch_status(TEAMQUOTAS + "/gone", {"pods": 0})
    assert exc.value.status == 404


# -- headers ---------------------------------------------------------------------------------------------
async def test_headers_carry_the_token_and_a_content_type_only_with_a_body(
    api: FakeApiServer, kube: KubeClient
) -> None:
    await kube.get_pod("ml", "job-0")
    get = api.requests[-1].headers
    assert get["Authorization"] == "Bearer token-1"
    assert get["Accept"] == "application/json" and get["User-Agent"] == "berth/0.1"
    assert "Content-Type" not in get


async def test_a_rotated_token_is_picked_up_once_the_cached_headers_expire(api: FakeApiServer) -> None:
    """In-cluster tokens rotate: the refresh hook is asked again after the headers' 10 s cache, not on
    every request."""
    cfg = api.configuration(token="token-1")
    tokens = iter(["token-2", "token-3"])
    asked: list[str] = []

    def refresh(c: Any) -> None:
        asked.append(c.api_key["authorization"])
        c.api_key["authorization"] = next(tokens)

    cfg.refresh_api_key_hook = refresh  # type: ignore[assignment]  # the client's stubs say None
    client = KubeClient(cfg)
    try:
        await client.get_pod("ml", "a")
        await client.get_pod("ml", "b")
        assert [r.headers["Authorization"] for r in api.requests] == ["Bearer token-2"] * 2
        assert asked == ["token-1"]
        client._auth.expire(time.monotonic() + 11)  # as if 11 s had passed
        await client.get_pod("ml", "c")
        assert api.requests[-1].headers["Authorization"] == "Bearer token-3"
    finally:
        await client.close()


async def test_no_token_no_authorization_header(api: FakeApiServer) -> None:
    client = api.client()
    try:
        await client.get_pod("ml", "a")
    finally:
        await client.close()
    assert "Authorization" not in api.requests[-1].headers
