"""Reload Berth's serving certificate when its files change (cert-manager rotates the Secret in place).

The files are polled (inode, mtime, size: a Secret volume swaps a symlink, so the inode changes) and
the new pair is loaded into the SSLContext the listener already uses: OpenSSL copies the certificate
into each connection at accept, so new connections get the new one and open ones keep theirs.
A pair that does not load (half-written, key not matching) keeps the old certificate and logs an error.
"""

import asyncio
import logging
import os
import shutil
import ssl
import tempfile
from pathlib import Path

log = logging.getLogger("berth.tls")

Signature = tuple[tuple[int, int, int, int] | None, ...]


def _stat(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class CertReloader:
    def __init__(self, ctx: ssl.SSLContext, cert: str, key: str | None, client_ca: str | None = None) -> None:
        self.ctx = ctx
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.seen = self.signature()
        self.reloads = 0
        self.failures = 0

    def signature(self) -> Signature:
        return tuple(_stat(p) for p in (self.cert, self.key, self.client_ca) if p)

    async def run(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.check()

    def check(self) -> bool:
        """Reload if any file changed since the last look; True when a new certificate is in use."""
        now = self.signature()
        if now == self.seen:
            return False
        self.seen = now  # a failed pair is retried when a file changes again, not every poll
        try:
            self.reload()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.failures += 1
            log.error("TLS files changed but cannot be used; keeping the old certificate: %s", exc)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert)
        return True

    def reload(self) -> None:
        """Check the pair on a scratch context first, from a private copy of the bytes, then load that
        same copy: load_cert_chain replaces the certificate before it checks the key, so a failure on the
        live context could leave it with a certificate and a key that do not match."""
        with tempfile.TemporaryDirectory(prefix="berth-tls-") as tmp:
            cert = shutil.copyfile(self.cert, Path(tmp) / "tls.crt")
            key = shutil.copyfile(self.key, Path(tmp) / "tls.key") if self.key else None
            ca = shutil.copyfile(self.client_ca, Path(tmp) / "ca.crt") if self.client_ca else None
            scratch = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            scratch.load_cert_chain(cert, key)
            if ca:
                scratch.load_verify_locations(ca)
            self.ctx.load_cert_chain(cert, key)
            if ca:
                # Adds the new CA; one already trusted stays trusted until a restart.
                self.ctx.load_verify_locations(ca)
