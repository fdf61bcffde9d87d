"""Interop with real third-party peers from Debian: `swaks` as the client, Postfix's `smtp-sink` as the
destination. Skipped with a reason where the tools are missing (.ci/run installs them)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.support.daemon import Daemon, free_port


class PostfixSink:
    """Postfix's smtp-sink on loopback, dumping each transaction to a file of `dump_dir`."""

    def __init__(self) -> None:
        # smtp-sink writes as `nobody`, which cannot enter pytest's 0700 temp dirs: a dir of its own.
        self.dump_dir = Path(tempfile.mkdtemp(prefix="fwdmail-smtp-sink-"))
        self.dump_dir.chmod(0o777)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [require_tool("smtp-sink"), "-u", "nobody", "-d", f"{self.dump_dir}/%H%M%S.",
             f"127.0.0.1:{self.port}", "20"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not self._listening():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "smtp-sink did not start"
            time.sleep(0.05)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_for(self, n: int, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(files := sorted(self.dump_dir.iterdir())) < n:
            assert time.monotonic() < deadline, f"smtp-sink has {len(files)} message(s), expected {n}"
            time.sleep(0.05)
        time.sleep(0.1)  # the last file may still be being written
        return [f.read_text(errors="replace") for f in sorted(self.dump_dir.iterdir())]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dump_dir, ignore_errors=True)


@pytest.fixture
def postfix_sink() -> Iterator[PostfixSink]:
    sink = PostfixSink()
    yield sink
    sink.stop()


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("swaks"), "--helo", "client.test", "--timeout", "30", *args],
                          capture_output=True, text=True, timeout=120)


def _setup(make_daemon: Callable[..., Daemon], sink: PostfixSink) -> tuple[Daemon, str]:
    d = make_daemon({"delivery": {"routes": {"*": sink.address}}})
    d.cli("account", "add", "owner@owner.test")
    d.cli("domain", "add", "ours.test", "--account", "owner@owner.test")
    d.cli("alias", "add", "hello@ours.test", "dest@dest.test")
    password = json.loads(d.cli("alias", "password", "hello@ours.test", "--json").output)["password"]
    return d, password


def test_swaks_through_the_mx_to_postfix_smtp_sink(make_daemon: Callable[..., Daemon],
                                                   postfix_sink: PostfixSink) -> None:
    d, _ = _setup(make_daemon, postfix_sink)
    token = uuid.uuid4().hex
    out = swaks("--server", f"127.0.0.1:{d.mx_port}", "--from", "someone@src.test",
                "--to", "hello@ours.test", "--h-Subject", token)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Forwarded" in out.stdout
    (dump,) = postfix_sink.wait_for(1)
    assert "X-Rcpt-Args: <dest@dest.test>" in dump
    assert "X-Mail-Args: <SRS0=" in dump and "=src.test=someone@srs.fwdmail.test>" in dump
    assert f"Subject: {token}" in dump


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_swaks_submission_with_auth_is_signed_and_delivered(
        make_daemon: Callable[..., Daemon], postfix_sink: PostfixSink, implicit: bool) -> None:
    d, password = _setup(make_daemon, postfix_sink)
    token = uuid.uuid4().hex
    tls = ["--tlsc", "--server", f"127.0.0.1:{d.submission_tls_port}"] if implicit else [
        "--tls", "--server", f"127.0.0.1:{d.submission_port}"]
    out = swaks(*tls, "--auth", "PLAIN", "--auth-user", "hello@ours.test", "--auth-password", password,
                "--from", "hello@ours.test", "--h-From", "hello@ours.test", "--to", "friend@dest.test",
                "--h-Subject", token)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Queued as " in out.stdout
    (dump,) = postfix_sink.wait_for(1)
    assert "X-Rcpt-Args: <friend@dest.test>" in dump and "X-Mail-Args: <hello@ours.test>" in dump
    assert "DKIM-Signature:" in dump and "d=ours.test" in dump and f"Subject: {token}" in dump
