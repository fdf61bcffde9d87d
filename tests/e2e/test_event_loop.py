"""`event_loop`: the daemon's whole path (MX workers, STARTTLS both ways, sender checks and the ARC seal
on threads, submission with AUTH, the queue, DKIM) works on uvloop and on asyncio's own loop alike."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim as dkimpy
import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import message
from tests.support.outbound import add_domain, client_tls, header, queue_id, submit, wait_status
from tests.support.outbound import message as outbound_message
from tests.support.smtp_sink import SmtpSink
from tests.support.tls import server_context

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module")
def tls_sink() -> Iterator[SmtpSink]:
    with SmtpSink(tls_context=server_context()) as sink:
        yield sink


@pytest.fixture(scope="module", params=LOOPS)
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           dns_server: LoopbackDNS, tls_sink: SmtpSink) -> Iterator[Daemon]:
    dns_server.add("src.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    d = Daemon(tmp_path_factory.mktemp(f"loop-{request.param}"), {
        "event_loop": request.param,
        "mx": {"workers": 2},
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"*": tls_sink.address}},
    })
    d.passwords = add_domain(d, "ours.test", "me@ours.test")  # type: ignore[attr-defined]
    d.cli("alias", "add", "fwd@ours.test", "someone@dest.test")
    d.start()
    yield d
    d.stop()


@pytest.fixture
def sink(tls_sink: SmtpSink) -> SmtpSink:
    tls_sink.reset()
    return tls_sink


def test_the_log_names_the_loop_it_runs_on(daemon: Daemon) -> None:
    assert f"event loop: {daemon.settings['event_loop']}" in daemon.logs()


def test_mx_forwards_through_both_processes_with_srs_seal_and_tls(daemon: Daemon, sink: SmtpSink) -> None:
    def one(i: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, local_hostname="client.test", timeout=30) as s:
            if i % 2:
                s.starttls(context=client_tls())
            s.ehlo()
            s.mail("sender@src.test")
            s.rcpt("fwd@ours.test")
            return s.data(message(subject=f"loop {i}"))

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(one, range(12)))
    assert all(code == 250 for code, _ in replies), replies
    got = sink.wait_for(12)
    assert sorted(header(m.data, "Subject") for m in got) == sorted(f"loop {i}" for i in range(12))
    assert all(m.mail_from.startswith("SRS0=") and m.tls for m in got)
    assert all(b"ARC-Seal: i=1;" in m.data and b"spf=pass" in m.data for m in got)


def test_submission_is_queued_signed_and_delivered(daemon: Daemon, sink: SmtpSink) -> None:
    pw = daemon.passwords  # type: ignore[attr-defined]
    qid = queue_id(submit(daemon, "me@ours.test", pw["me@ours.test"], outbound_message("me@ours.test")))
    wait_status(daemon, qid, "delivered")
    (got,) = sink.wait_for(1)
    (record,) = [r["value"] for r in json.loads(daemon.cli("domain", "dns", "ours.test", "--json").output)
                 if "._domainkey." in r["name"]]
    assert dkimpy.verify(got.data, dnsfunc=lambda name, timeout=5: record.encode())
    assert got.tls


def test_asking_for_uvloop_without_it_is_one_line_and_takes_no_lock(tmp_path: Path) -> None:
    config = tmp_path / "fwdmail.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nevent_loop = "uvloop"\n')
    hide_uvloop = "import sys; sys.modules['uvloop'] = None; from fwdmail.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", hide_uvloop, "--config", str(config), "serve"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: event_loop = \"uvloop\" but uvloop is not installed: pip install 'fwdmail[fast]'"]
    assert not (tmp_path / "data" / "serve.lock").exists()
