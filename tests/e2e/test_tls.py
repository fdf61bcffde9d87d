"""TLS of the daemon's listeners (MX STARTTLS, submission STARTTLS and implicit TLS), with real clients.

Protocol versions and cipher suites: every handshake the daemon must refuse is first completed by a
permissive twin server (the daemon's own certificate, every protocol and cipher this OpenSSL has), so a
refusal is the daemon's policy, not the client's inability. SIGHUP reloads the certificate and key for
new sessions without touching established ones; a bad new pair keeps the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from fwdmail.runtime.context import TLS12_CIPHERS
from tests.conftest import require_tool
from tests.support import tls
from tests.support.daemon import Daemon
from tests.support.smtp_sink import SmtpSink

CLIENT = "client.test"
ENDPOINTS = ("mx", "submission", "submission-tls")
ALLOWED_TLS12 = {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"}

# (cipher string for a TLS 1.2 client, why the daemon refuses it)
WEAK_CIPHERS = [
    ("RC4-SHA", "RC4"),
    ("DES-CBC3-SHA", "3DES"),
    ("DES-CBC-SHA", "single DES"),
    ("EXP-RC4-MD5", "export grade"),
    ("NULL-MD5", "no encryption, MD5"),
    ("NULL-SHA256", "no encryption"),
    ("ECDHE-RSA-NULL-SHA", "no encryption, ECDHE"),
    ("ADH-AES128-GCM-SHA256", "anonymous DH, no certificate"),
    ("AECDH-AES128-SHA", "anonymous ECDH, no certificate"),
    ("AES128-GCM-SHA256", "static RSA key exchange, no forward secrecy"),
    ("AES128-SHA", "static RSA key exchange, CBC with SHA-1"),
    ("ECDHE-RSA-AES128-SHA", "CBC with SHA-1"),
    ("ECDHE-RSA-AES256-SHA384", "CBC mode"),
    ("DHE-RSA-AES128-GCM-SHA256", "finite-field DHE (not offered: ECDHE only)"),
    ("ECDHE-RSA-CAMELLIA128-SHA256", "Camellia CBC"),
]


def _quiet(fn: Callable[[], Any]) -> Any:
    """Run `fn` without the DeprecationWarning that naming TLS 1.0/1.1 raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn()


def client_ctx(ciphers: str = "DEFAULT:@SECLEVEL=0", maximum: ssl.TLSVersion | None = None,
               minimum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client that checks nothing about the certificate and is as permissive as OpenSSL lets it be,
    except where told: `ciphers` and the version range."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers(ciphers)

    def versions() -> None:
        ctx.minimum_version = minimum or ssl.TLSVersion.MINIMUM_SUPPORTED
        if maximum is not None:
            ctx.maximum_version = maximum

    _quiet(versions)
    return ctx


def weak_client(cipher: str) -> ssl.SSLContext:
    try:
        return client_ctx(f"{cipher}:@SECLEVEL=0", maximum=ssl.TLSVersion.TLSv1_2)
    except ssl.SSLError:
        pytest.skip(f"{cipher} is not in this OpenSSL build at all, so no peer here can negotiate it")


class PermissiveTwin:
    """A TLS server with the daemon's own certificate and key that accepts every protocol and cipher
    this OpenSSL build has; `handshake(ctx)` says whether a client context can complete a handshake."""

    def __init__(self, cert: Path, key: Path, dh_params: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

        def versions() -> None:
            self.ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED

        _quiet(versions)
        self.ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
        self.ctx.load_cert_chain(cert, key)
        self.ctx.load_dh_params(dh_params)  # for the finite-field DHE suites, anonymous ones included
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(10)
            with contextlib.suppress(OSError), conn, self.ctx.wrap_socket(conn, server_side=True) as t:
                t.sendall(b"ok")

    def handshake(self, ctx: ssl.SSLContext) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw, \
                ctx.wrap_socket(raw) as t:
            assert t.recv(2) == b"ok"
            return str(t.version())

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def open_tls(d: Daemon, endpoint: str, ctx: ssl.SSLContext) -> smtplib.SMTP:
    """An SMTP session on `endpoint` with TLS established (STARTTLS, or TLS from the first byte) and
    EHLO said over it."""
    if endpoint == "submission-tls":
        s: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", d.submission_tls_port, context=ctx, timeout=15)
    else:
        s = smtplib.SMTP("127.0.0.1", d.mx_port if endpoint == "mx" else d.submission_port, timeout=15)
        try:
            s.ehlo(CLIENT)
            assert s.has_extn("starttls"), f"{endpoint} does not offer STARTTLS"
            s.starttls(context=ctx)
        except BaseException:
            s.close()
            raise
    code, _ = s.ehlo(CLIENT)
    assert code == 250
    return s


def refused(d: Daemon, endpoint: str, ctx: ssl.SSLContext) -> bool:
    """True if the TLS handshake on `endpoint` fails; a completed one is closed politely."""
    try:
        s = open_tls(d, endpoint, ctx)
    except (ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected):
        return True
    s.quit()
    return False


def fingerprint(s: smtplib.SMTP) -> str:
    der = s.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def assert_serving(d: Daemon) -> None:
    """The daemon is alive and every listener still completes a TLS 1.2+ session."""
    assert d.proc is not None and d.proc.poll() is None, d.logs()
    for endpoint in ENDPOINTS:
        with open_tls(d, endpoint, client_ctx()) as s:
            assert s.noop()[0] == 250


# protocol versions and ciphers

@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon on its generated self-signed pair (an RSA key, as a Let's Encrypt RSA cert has)."""
    d = Daemon(tmp_path_factory.mktemp("tls"), {"dns": {"nameservers": ["127.0.0.1:9"]}}).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def twin(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PermissiveTwin]:
    dh = tmp_path_factory.mktemp("dh") / "ffdhe2048.pem"
    subprocess.run([require_tool("openssl"), "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
                    "group:ffdhe2048", "-out", str(dh)], check=True, capture_output=True, timeout=60)
    t = PermissiveTwin(daemon.data_dir / "tls" / "cert.pem", daemon.data_dir / "tls" / "key.pem", dh)
    yield t
    t.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_1_0_and_1_1_are_refused(daemon: Daemon, twin: PermissiveTwin, endpoint: str,
                                     version: str) -> None:
    tls_version = _quiet(lambda: getattr(ssl.TLSVersion, version))
    ctx = client_ctx(maximum=tls_version, minimum=tls_version)
    assert twin.handshake(ctx) == version.replace("_", ".")  # this client can speak it
    assert refused(daemon, endpoint, ctx)
    assert_serving(daemon)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_1_2_and_1_3_are_accepted(daemon: Daemon, endpoint: str, version: str) -> None:
    tls_version = getattr(ssl.TLSVersion, version)
    with open_tls(daemon, endpoint, client_ctx(maximum=tls_version, minimum=tls_version)) as s:
        assert s.sock.version() == version.replace("_", ".")  # type: ignore[union-attr]
        assert s.noop()[0] == 250


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("cipher", "why"), WEAK_CIPHERS, ids=[c for c, _ in WEAK_CIPHERS])
def test_weak_ciphers_are_refused(daemon: Daemon, twin: PermissiveTwin, endpoint: str, cipher: str,
                                  why: str) -> None:
    ctx = weak_client(cipher)
    assert twin.handshake(ctx) == "TLSv1.2"
    assert refused(daemon, endpoint, ctx), f"{endpoint} negotiated {cipher} ({why})"


def test_tls_1_2_offers_only_ecdhe_with_aead(daemon: Daemon) -> None:
    """Every TLS 1.2 suite this OpenSSL knows, one at a time: the daemon completes exactly the ECDHE
    AEAD ones its RSA certificate can sign for."""
    everything = client_ctx("ALL:COMPLEMENTOFALL:@SECLEVEL=0", maximum=ssl.TLSVersion.TLSv1_2)
    names = sorted({c["name"] for c in everything.get_ciphers() if c["protocol"] != "TLSv1.3"})
    assert len(names) > 50
    accepted = {name for name in names if not refused(daemon, "submission-tls", weak_client(name))}
    assert accepted == ALLOWED_TLS12
    with open_tls(daemon, "mx", everything) as s:
        assert s.sock.cipher()[0] in ALLOWED_TLS12  # type: ignore[union-attr]


def test_server_cipher_string_names_only_ecdhe_aead() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers(TLS12_CIPHERS)
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)


def test_refused_handshakes_leave_no_traceback(daemon: Daemon) -> None:
    old = client_ctx(maximum=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA:@SECLEVEL=0")
    for endpoint in ENDPOINTS:
        assert refused(daemon, endpoint, old)
    assert_serving(daemon)
    logs = daemon.logs()
    assert "Traceback" not in logs and "unexpected error" not in logs, logs


@pytest.mark.parametrize("endpoint", ["mx", "submission"])
def test_openssl_s_client_starttls(daemon: Daemon, endpoint: str) -> None:
    """A third-party peer: OpenSSL's own client gets TLS 1.2/1.3, and no TLS 1.1 or CBC suite."""
    openssl = require_tool("openssl")
    port = daemon.mx_port if endpoint == "mx" else daemon.submission_port

    def s_client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp",
                               "-name", CLIENT, "-brief", *args],
                              input="", capture_output=True, text=True, timeout=30)

    for version, protocol in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        ok = s_client(version)
        assert ok.returncode == 0 and f"Protocol version: {protocol}" in ok.stderr, ok.stderr
    for args in (("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"),
                 ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA:@SECLEVEL=0")):
        bad = s_client(*args)
        assert bad.returncode != 0 and "Protocol version" not in bad.stderr, bad.stderr


# SIGHUP: certificate reload

def write_pair(cert: trustme.LeafCert, cert_path: Path, key_path: Path) -> None:
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.write_bytes(cert.private_key_pem.bytes())
    key_path.chmod(0o600)


def leaf_fingerprint(cert: trustme.LeafCert) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())).hexdigest()


def hangup(d: Daemon, expect: str, processes: int = 1, timeout: float = 30) -> None:
    """SIGHUP, then wait until the log has `processes` more `expect` lines than before (one per serving
    process; the daemon staying up)."""
    before = d.logs().count(expect)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while d.logs().count(expect) < before + processes:
        assert d.proc.poll() is None, f"the daemon exited on SIGHUP:\n{d.logs()}"
        assert time.monotonic() < deadline, f"no new {expect!r} after SIGHUP:\n{d.logs()}"
        time.sleep(0.05)


@pytest.fixture
def pair_daemon(make_daemon: Callable[..., Daemon], tmp_path: Path, sink: SmtpSink,
                request: pytest.FixtureRequest) -> tuple[Daemon, Path, Path]:
    """A daemon on a CA-signed pair, either configured in [tls] or put in place of the generated one;
    hello@ours.test forwards to `sink`."""
    first = tls.ca().issue_cert("localhost", "127.0.0.1")
    overrides: dict[str, Any] = {"delivery": {"routes": {"dest.test": sink.address}}}
    configured = getattr(request, "param", "configured") == "configured"
    if configured:
        cert_path, key_path = tmp_path / "pair" / "cert.pem", tmp_path / "pair" / "key.pem"
        cert_path.parent.mkdir()
        write_pair(first, cert_path, key_path)
        overrides["tls"] = {"cert": str(cert_path), "key": str(key_path)}
    d = make_daemon(overrides, start=False)
    d.cli("account", "add", "owner@owner.test")
    d.cli("domain", "add", "ours.test", "--account", "owner@owner.test")
    d.cli("alias", "add", "hello@ours.test", "dest@dest.test")
    if not configured:
        cert_path, key_path = d.data_dir / "tls" / "cert.pem", d.data_dir / "tls" / "key.pem"
        write_pair(first, cert_path, key_path)
    d.start()
    with open_tls(d, "submission-tls", tls.client_context()) as s:
        assert fingerprint(s) == leaf_fingerprint(first)
    return d, cert_path, key_path


RELOADED = "certificate reloaded"
KEPT = "certificate not reloaded, keeping the previous one"


@pytest.mark.parametrize("pair_daemon", ["configured", "generated"], indirect=True)
def test_sighup_reloads_the_certificate_for_new_sessions_only(pair_daemon: tuple[Daemon, Path, Path],
                                                              sink: SmtpSink) -> None:
    d, cert_path, key_path = pair_daemon
    verify = tls.client_context()
    established = {endpoint: open_tls(d, endpoint, verify) for endpoint in ENDPOINTS}
    try:
        old = {endpoint: fingerprint(s) for endpoint, s in established.items()}
        assert len(set(old.values())) == 1
        second = tls.ca().issue_cert("localhost", "127.0.0.1")
        write_pair(second, cert_path, key_path)
        hangup(d, RELOADED)
        for endpoint in ENDPOINTS:
            with open_tls(d, endpoint, verify) as fresh:
                assert fingerprint(fresh) == leaf_fingerprint(second) != next(iter(old.values()))
        for endpoint, s in established.items():
            assert s.noop()[0] == 250, endpoint
            assert fingerprint(s) == old[endpoint]
        mx = established["mx"]
        msg = b"From: a@src.test\r\nTo: hello@ours.test\r\nSubject: after reload\r\n\r\nhi\r\n"
        assert mx.sendmail("a@src.test", ["hello@ours.test"], msg) == {}
        assert sink.wait_for(1)[0].rcpt_tos == ["dest@dest.test"]
    finally:
        for s in established.values():
            with contextlib.suppress(smtplib.SMTPException, OSError):
                s.quit()
    assert d.proc is not None and d.proc.poll() is None
    assert d.stop() == 0


def _garbage(cert_path: Path, key_path: Path, spare: trustme.LeafCert) -> None:
    cert_path.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")


def _mismatch(cert_path: Path, key_path: Path, spare: trustme.LeafCert) -> None:
    cert_path.write_bytes(spare.cert_chain_pems[0].bytes())  # the key file stays the old pair's


def _missing(cert_path: Path, key_path: Path, spare: trustme.LeafCert) -> None:
    key_path.unlink()


@pytest.mark.parametrize("breakage", [_garbage, _mismatch, _missing],
                         ids=["bad-pem", "key-mismatch", "missing"])
def test_sighup_with_a_broken_pair_keeps_the_old_one(pair_daemon: tuple[Daemon, Path, Path],
                                                     breakage: Callable[[Path, Path, trustme.LeafCert], None]
                                                     ) -> None:
    d, cert_path, key_path = pair_daemon
    with open_tls(d, "submission-tls", tls.client_context()) as s:
        before = fingerprint(s)
    spare = tls.ca().issue_cert("localhost", "127.0.0.1")
    breakage(cert_path, key_path, spare)
    hangup(d, KEPT)
    assert d.logs().count(KEPT) == 1
    line = next(x for x in d.logs().splitlines() if KEPT in x)
    assert " ERROR fwdmail.tls: " in line and "Traceback" not in d.logs(), d.logs()
    for endpoint in ENDPOINTS:
        with open_tls(d, endpoint, tls.client_context()) as s:
            assert fingerprint(s) == before, endpoint
    write_pair(spare, cert_path, key_path)
    hangup(d, RELOADED)
    with open_tls(d, "mx", tls.client_context()) as s:
        assert fingerprint(s) == leaf_fingerprint(spare)
    assert d.stop() == 0


def test_sighup_reaches_the_mx_worker_processes(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """With `[mx] workers = 2` the serving process hands connections to a worker too: after SIGHUP every
    new MX session, whichever process serves it, shows the new certificate."""
    first, second = (tls.ca().issue_cert("localhost", "127.0.0.1") for _ in range(2))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_pair(first, cert_path, key_path)
    d = make_daemon({"mx": {"workers": 2}, "tls": {"cert": str(cert_path), "key": str(key_path)}})
    for _ in range(4):
        with open_tls(d, "mx", tls.client_context()) as s:
            assert fingerprint(s) == leaf_fingerprint(first)
    write_pair(second, cert_path, key_path)
    hangup(d, RELOADED, processes=2)
    for _ in range(6):
        with open_tls(d, "mx", tls.client_context()) as s:
            assert fingerprint(s) == leaf_fingerprint(second)
    assert d.stop() == 0
