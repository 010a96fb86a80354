"""mTLS between kube-scheduler and Berth (deploy/overlays/tls, scripts/make-certs.sh).

The real kube-scheduler calls Berth's verbs over HTTPS with a client certificate and its pods get bound
through Berth; a caller without a certificate, or with one from another CA, gets no HTTP reply at all (the
handshake fails); the plain port keeps only health and metrics."""

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as kclient

from tests.e2e import harness as h
from tests.e2e.objects import create_namespace, create_nodes, delete_nodes, node, pod
from tests.e2e.prod_helpers import (
    GPU_IDS,
    Certs,
    TlsBerth,
    client_context,
    https_post,
    make_certs,
    tls12_handshake,
    wait_all_bound,
)

SCHEDULER = "berth-mtls"  # only this test's kube-scheduler takes these pods
GROUP = "prod-mtls"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("berth-certs"))


@pytest.fixture(scope="module")
def tls_berth(cp: h.ControlPlane, certs: Certs) -> Iterator[TlsBerth]:
    handle = TlsBerth(cp, h.free_port(), cp.berth_kubeconfig, name="berth-mtls", certs=certs)  # type: ignore[attr-defined]
    try:
        handle.start()  # ready = /readyz on the plain port
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def mtls_scheduler(cp: h.ControlPlane, tls_berth: TlsBerth, certs: Certs) -> Iterator[h.Proc]:
    cfg = h.scheduler_config(
        cp,
        cp.dir / "sched-mtls.yaml",
        tls_berth.https_url,
        SCHEDULER,
        tls={"caFile": str(certs.ca), "certFile": str(certs.client_cert), "keyFile": str(certs.client_key)},
    )
    proc = h.start_scheduler(cp, "kube-scheduler-mtls", cfg)
    try:
        yield proc
    finally:
        proc.stop()


def test_kube_scheduler_binds_through_berth_over_mtls(
    api: kclient.CoreV1Api, tls_berth: TlsBerth, mtls_scheduler: h.Proc
) -> None:
    ns = create_namespace(api, f"prod-mtls-{int(time.time())}")
    create_nodes(api, [node("mtls-a", GROUP, gpus=8), node("mtls-b", GROUP, gpus=8)])
    try:
        binds = tls_berth.metric("berth_binds_total", result="bound")
        filters = tls_berth.metric("berth_request_duration_seconds_count", verb="filter")
        api.create_namespaced_pod(ns, pod("two-gpus", GROUP, gpus=2, scheduler=SCHEDULER))
        api.create_namespaced_pod(ns, pod("cpu-only", GROUP, scheduler=SCHEDULER))
        placed = wait_all_bound(api, ns, ["two-gpus", "cpu-only"], timeout=60)

        # The plain port has no verbs (checked below), so these calls came over the mTLS port; the extender
        # binds (bindVerb) and is not ignorable: a pod bound at all was bound by Berth.
        assert tls_berth.metric("berth_binds_total", result="bound") - binds == 2
        assert tls_berth.metric("berth_request_duration_seconds_count", verb="filter") > filters
        ids = api.read_namespaced_pod("two-gpus", ns).metadata.annotations[GPU_IDS].split(",")
        assert len(set(ids)) == 2, ids
        held = next(n for n in tls_berth.get("/debug/nodes")["nodes"] if n["name"] == placed["two-gpus"])
        assert set(ids) <= set(held["gpuIdsUsed"].split(",")), (ids, held)
        print(f"bound over mTLS: {placed}, GPUs {ids}")
    finally:
        for name in ("two-gpus", "cpu-only"):
            api.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        delete_nodes(api, GROUP)


def _assert_no_http_reply(outcome: int | BaseException, who: str) -> None:
    assert not isinstance(outcome, int), f"{who} got an HTTP reply ({outcome}) from the mTLS port"
    assert isinstance(outcome, ssl.SSLError | ConnectionError), f"{who}: unexpected {outcome!r}"


def test_callers_without_a_certificate_of_berths_ca_get_no_reply(
    tls_berth: TlsBerth, certs: Certs, tmp_path: Path
) -> None:
    url = tls_berth.https_url + "/scheduler/filter"
    # Control: the scheduler's client pair gets HTTP answers from the same port and path.
    good = https_post(url, client_context(certs.ca, certs.client_cert, certs.client_key))
    assert isinstance(good, int) and 200 <= good < 500, good
    assert tls_berth.get("/debug/state")["ready"] is True

    assert tls12_handshake(tls_berth.tls_port, client_context(certs.ca, certs.client_cert, certs.client_key)) is None

    other = make_certs(tmp_path / "other-ca")
    assert other.ca.read_bytes() != certs.ca.read_bytes()
    # Both clients trust Berth's CA (so a refusal is the server's); one has no pair, one a pair of another CA.
    for who, ctx in (
        ("a client without a certificate", lambda: client_context(certs.ca)),
        (
            "a client with a certificate from another CA",
            lambda: client_context(certs.ca, other.client_cert, other.client_key),
        ),
    ):
        outcome = https_post(url, ctx())
        _assert_no_http_reply(outcome, who)
        handshake = tls12_handshake(tls_berth.tls_port, ctx())
        assert isinstance(handshake, ssl.SSLError | ConnectionError), f"{who}: TLS 1.2 handshake gave {handshake!r}"
        print(f"{who}: HTTPS request -> {outcome!r}; TLS 1.2 handshake -> {handshake!r}")

    # The plain port keeps health and metrics only.
    for path in ("/scheduler/filter", "/scheduler/bind"):
        req = urllib.request.Request(
            tls_berth.url + path, data=b"{}", method="POST", headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 404, path
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tls_berth.url + "/debug/state", timeout=10)
    assert refused.value.code == 404
    with urllib.request.urlopen(tls_berth.url + "/readyz", timeout=10) as r:
        assert r.status == 200
