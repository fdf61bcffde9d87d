"""DKIM signing: rsa-sha256 relaxed/relaxed from OpenSSL, verified by dkimpy and by OpenDKIM.

OpenDKIM's `opendkim-testmsg` looks the key up in DNS through the system resolver, which cannot be given
a port. It runs in a private network and mount namespace (`unshare`), where /etc/resolv.conf names
127.0.0.1 and the test's DNS server answers on port 53 with the record `fwdmail domain dns` printed:
no query leaves the namespace, whose only interface is its own loopback.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim as dkimpy
import pytest

from fwdmail import store
from fwdmail.auth import dkim_sign as dkim
from fwdmail.queue.service import sign_all
from fwdmail.runtime import keys
from tests.conftest import require_tool
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.outbound import add_domain, message, queue_id, submit, wait_status
from tests.support.smtp_sink import SmtpSink

NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)  # dkimpy refuses a t= in its future
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key() -> tuple[str, bytes]:
    pem = keys.generate_dkim_key()
    return pem, keys.dkim_public_record(pem).encode()


def verify(signed: bytes, record: bytes) -> bool:
    return bool(dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: record))


MSG = (b"From: Alice <alice@example.test>\r\nTo: bob@dest.test\r\nSubject: Hello  there\r\n"
       b"Date: Fri, 01 Mar 2030 09:30:00 +0000\r\nMessage-ID: <m1@example.test>\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nLine one  \r\n\r\nLine two\r\n\r\n\r\n")


def test_signature_verifies_and_covers_the_required_headers(key: tuple[str, bytes]) -> None:
    pem, record = key
    signed = dkim.signed_message(MSG, "example.test", "sel", pem, NOW)
    assert verify(signed, record)
    header = signed.split(b"\r\n\r\n")[0].split(b"\r\nFrom:")[0]
    tags = dict(t.split(b"=", 1) for t in (x.strip() for x in b"".join(header.split(b"\r\n"))
                                           .removeprefix(b"DKIM-Signature:").split(b";")) if t)
    assert tags[b"a"] == b"rsa-sha256" and tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"d"] == b"example.test" and tags[b"s"] == b"sel"
    assert tags[b"t"] == str(int(NOW.replace(tzinfo=dt.UTC).timestamp())).encode()
    signed_headers = [h.strip() for h in tags[b"h"].split(b":")]
    for name in (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"):
        assert name in signed_headers
    assert signed_headers.count(b"from") == 2, "From is signed once more than present"


@pytest.mark.parametrize("tamper", [
    lambda m: m.replace(b"Line two", b"Line 2"),
    lambda m: m.replace(b"Subject: Hello", b"Subject: Hallo"),
    lambda m: m.replace(b"\r\n\r\nLine one", b"\r\nFrom: mallory@evil.test\r\n\r\nLine one"),
    lambda m: m.replace(b"\r\n\r\nLine one", b"\r\nCc: extra@evil.test\r\n\r\nLine one").replace(
        b"MIME-Version", b"X-MIME-Version"),
])
def test_any_change_to_signed_content_breaks_the_signature(key: tuple[str, bytes], tamper: object) -> None:
    pem, record = key
    signed = dkim.signed_message(MSG, "example.test", "sel", pem, NOW)
    assert not verify(tamper(signed), record)  # type: ignore[operator]


def test_relaxed_canonicalisation_survives_refolding_and_trailing_space(key: tuple[str, bytes]) -> None:
    pem, record = key
    signed = dkim.signed_message(MSG, "example.test", "sel", pem, NOW)
    refolded = signed.replace(b"Subject: Hello  there", b"Subject:   Hello\r\n   there").replace(
        b"Line one  \r\n", b"Line one\r\n")
    assert verify(refolded, record)


def test_bad_keys_and_messages_are_clear_errors() -> None:
    with pytest.raises(dkim.DkimError, match="private key"):
        dkim.sign(MSG, "example.test", "sel", "not a key", NOW)
    with pytest.raises(dkim.DkimError, match="malformed"):
        dkim.sign(b"no header line here\r\n\r\nbody", "example.test", "sel", keys.generate_dkim_key(1024),
                  NOW)



AWKWARD = [
    MSG.replace(b"\r\n", b"\n"),  # bare line feeds: canonicalised as CRLF, as a verifier reads them
    MSG.split(b"\r\n\r\n")[0] + b"\r\n\r\n",  # empty body
    MSG.split(b"\r\n\r\n")[0] + b"\r\n",  # no body at all
    MSG + b"\r\n" * 500 + b" \t \r\n",  # a long blank tail
    MSG.replace(b"Subject: Hello  there", b"Subject: Hello\r\n\tthere\r\nCc: a@x.test,\r\n b@x.test"),
    MSG.replace(b"Line two", b"Line\ttwo \t with\t\ttabs   and  spaces " * 50),
]


@pytest.mark.parametrize("msg", AWKWARD, ids=["lf", "empty-body", "no-body", "blank-tail", "folded", "wsp"])
def test_awkward_messages_sign_and_verify(key: tuple[str, bytes], msg: bytes) -> None:
    pem, record = key
    signed = dkim.signed_message(msg, "example.test", "sel", pem, NOW)
    assert verify(signed, record)
    assert not verify(signed.replace(b"Date:", b"Date: Sat,", 1), record)


def test_awkward_message_verifies_with_opendkim(key: tuple[str, bytes], tmp_path: Path) -> None:
    pem, record = key
    signed = dkim.signed_message(AWKWARD[-1] + b"\r\n\r\n", "example.test", "sel", pem, NOW)
    good = opendkim_testmsg(signed, "sel._domainkey.example.test", record.decode(), tmp_path)
    assert good.returncode == 0, good.stderr
    bad = opendkim_testmsg(signed.replace(b"with\t\ttabs", b"with\t\tcats", 1), "sel._domainkey.example.test",
                           record.decode(), tmp_path)
    assert bad.returncode != 0


# the daemon signs what it delivers

@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory,
              dns_server: LoopbackDNS) -> Iterator[tuple[bytes, str, str]]:
    """One message submitted to a real daemon and received by the sink, with the DKIM record to publish."""
    with SmtpSink() as sink:
        d = Daemon(tmp_path_factory.mktemp("dkim"), {
            "dns": {"nameservers": [dns_server.address]}, "delivery": {"routes": {"*": sink.address}}})
        pw = add_domain(d, "example.test", "alice@example.test")["alice@example.test"]
        d.start()
        try:
            qid = queue_id(submit(d, "alice@example.test", pw, message(
                "Alice <alice@example.test>", subject="Grüße, signed", body="Hello   world  \r\n\r\n")))
            wait_status(d, qid, "delivered")
            (got,) = sink.wait_for(1)
            records = json.loads(d.cli("domain", "dns", "example.test", "--json").output)
        finally:
            d.stop()
    (dkim_record,) = [r for r in records if "._domainkey." in r["name"]]
    yield got.data, dkim_record["name"], dkim_record["value"]


def test_delivered_mail_verifies_with_dkimpy(delivered: tuple[bytes, str, str]) -> None:
    data, name, value = delivered
    assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
    seen = []

    def lookup(qname: bytes, timeout: int = 5) -> bytes:
        seen.append(qname.decode().rstrip("."))
        return value.encode()

    assert dkimpy.verify(data, dnsfunc=lookup)
    assert seen == [name]


_NAMESPACE_SCRIPT = """
import subprocess, sys
sys.path.insert(0, sys.argv[1])
from tests.support.dns_server import LoopbackDNS
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", sys.argv[2], "/etc/resolv.conf"], check=True)
dns = LoopbackDNS()
dns.port = 53
dns.add(sys.argv[3], "TXT", sys.argv[4])
dns.start()
try:
    with open(sys.argv[6], "rb") as msg:
        run = subprocess.run([sys.argv[5]], stdin=msg, capture_output=True, timeout=30)
finally:
    dns.stop()
sys.stderr.write(run.stderr.decode(errors="replace"))
sys.exit(run.returncode)
"""


def opendkim_testmsg(message_bytes: bytes, name: str, value: str,
                     tmp_path: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("opendkim-testmsg")
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        pytest.skip("unshare and ip are needed to give opendkim-testmsg a private loopback DNS")
    probe = subprocess.run([unshare, "--mount", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a private network namespace for opendkim-testmsg: {probe.stderr.strip()}")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
    msg = tmp_path / "message.eml"
    msg.write_bytes(message_bytes)
    return subprocess.run(
        [unshare, "--mount", "--net", sys.executable, "-c", _NAMESPACE_SCRIPT, str(ROOT), str(resolv), name,
         value, tool, str(msg)],
        capture_output=True, text=True, timeout=60,
    )


def test_delivered_mail_verifies_with_opendkim(delivered: tuple[bytes, str, str], tmp_path: Path) -> None:
    data, name, value = delivered
    good = opendkim_testmsg(data, name, value, tmp_path)
    assert good.returncode == 0, good.stderr
    bad = opendkim_testmsg(data.replace(b"Hello", b"Hallo"), name, value, tmp_path)
    assert bad.returncode != 0 and "signature" in bad.stderr.lower(), "OpenDKIM really checks"


def test_a_signing_batch_signs_each_message_and_a_bad_key_fails_alone(key: tuple[str, bytes]) -> None:
    pem, record = key

    def claimed(n: int, private_key: str) -> store.ClaimedEmail:
        head, _, body = MSG.replace(b"Hello", f"Hello {n}".encode()).partition(b"\r\n\r\n")
        return store.ClaimedEmail(n, f"Q{n}", "t", "example.test", "sel", private_key, "owner@owner.test",
                                  "alice@example.test", head + b"\r\n", body, ("bob@dest.test",), NOW, NOW, 0,
                                  False)

    batch = [claimed(1, pem), claimed(2, "not a key"), claimed(3, pem)]
    first, bad, third = sign_all(batch, NOW)
    assert isinstance(bad, dkim.DkimError)
    for email, signed in ((batch[0], first), (batch[2], third)):
        assert isinstance(signed, bytes) and signed.endswith(email.message)
        assert verify(signed, record)
