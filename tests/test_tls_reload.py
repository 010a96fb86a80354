"""A rotated serving certificate is picked up without a restart: new connections to Berth's TLS listener see
the new certificate; a bad new file (garbage, or a certificate without its key) keeps the old one."""

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from scheduler.app import Listener, _listen, tls_context
from scheduler.extender.server import Berth
from scheduler.observability.metrics import Metrics
from scheduler.policy.binder import Binder
from scheduler.tls import CertReloader
from tests.conftest import demo_cluster


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(directory: Path, cert: trustme.LeafCert) -> tuple[Path, Path]:
    """As a Secret volume does: new files renamed into place (a new inode)."""
    crt, key = directory / "tls.crt", directory / "tls.key"
    for path, blob in ((crt, cert.cert_chain_pems[0].bytes()), (key, cert.private_key_pem.bytes())):
        tmp = path.with_suffix(".new")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return crt, key


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


class Served:
    def __init__(self, listener: Listener, reloader: CertReloader, client: ssl.SSLContext) -> None:
        self.listener, self.reloader, self.client = listener, reloader, client

    async def peer_cert(self) -> bytes:
        """The certificate a new connection is served."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.listener.port, ssl=self.client, server_hostname="127.0.0.1"
        )
        try:
            blob = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200"), "the listener answers over TLS"
            return bytes(blob)
        finally:
            writer.close()


@pytest.fixture
async def served(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[tuple[Served, trustme.LeafCert]]:
    first = ca.issue_cert("127.0.0.1")
    crt, key = write_pair(tmp_path, first)
    ctx = tls_context(str(crt), str(key), None)
    assert ctx is not None
    state = demo_cluster(nodes=5)
    state.config.server.host = "127.0.0.1"
    listener = await _listen(Berth(state, Metrics(), Binder(state, None, None)), state.config, 0, ctx, verbs=True)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        yield Served(listener, CertReloader(ctx, str(crt), str(key)), client), first
    finally:
        await listener.close()


async def test_new_connection_after_rotation_sees_new_certificate(
    served: tuple[Served, trustme.LeafCert], ca: trustme.CA, tmp_path: Path
) -> None:
    s, first = served
    assert await s.peer_cert() == der(first)
    assert not s.reloader.check(), "nothing changed yet"
    second = ca.issue_cert("127.0.0.1")
    write_pair(tmp_path, second)
    task = asyncio.create_task(s.reloader.run(0.05))  # the poll loop, as `berth serve` runs it
    try:
        for _ in range(100):
            if s.reloader.reloads:
                break
            await asyncio.sleep(0.05)
        assert s.reloader.reloads == 1
        assert await s.peer_cert() == der(second)
    finally:
        task.cancel()


async def test_garbage_certificate_keeps_the_old_one(
    served: tuple[Served, trustme.LeafCert], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s, first = served
    (tmp_path / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with caplog.at_level(logging.ERROR, logger="berth.tls"):
        assert not s.reloader.check()
    assert s.reloader.failures == 1
    assert any("keeping the old certificate" in r.getMessage() for r in caplog.records), caplog.text
    assert await s.peer_cert() == der(first)


async def test_certificate_without_its_key_keeps_the_old_pair(
    served: tuple[Served, trustme.LeafCert], ca: trustme.CA, tmp_path: Path
) -> None:
    """Half a rotation (the new certificate is there, its key not yet): the live context must not end up
    with the new certificate and the old key, which would fail every handshake."""
    s, first = served
    (tmp_path / "tls.crt").write_bytes(ca.issue_cert("127.0.0.1").cert_chain_pems[0].bytes())
    assert not s.reloader.check()
    assert await s.peer_cert() == der(first)
    # The key arrives: the pair is complete and loads.
    newer = ca.issue_cert("127.0.0.1")
    write_pair(tmp_path, newer)
    assert s.reloader.check()
    assert await s.peer_cert() == der(newer)
