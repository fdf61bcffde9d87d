"""The bench's `postfix-stack` anchor (bench/postfix_stack.py) brought up on loopback and proved to do the
work it is compared for: SRS by postsrsd, Authentication-Results and a valid ARC set by rspamd, a valid DKIM
signature by OpenDKIM on mail submitted with SMTP AUTH (Cyrus SASL). Nothing is timed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import fwd, postfix_stack
from bench.dns_helper import DnsHelper
from bench.sanity import check_postfix_stack
from tests.support.smtp_sink import SmtpSink

pytestmark = pytest.mark.slow

MESSAGES = 3


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "Postfix's master must start as root"
    if shutil.which("postfix", path="/usr/sbin:" + os.environ.get("PATH", "")) is None:
        return "Debian package postfix is not installed"
    missing = postfix_stack.missing_tools()
    if missing:
        return f"not installed: {', '.join(missing)} (Debian rspamd, postsrsd, opendkim, sasl2-bin)"
    return None


@pytest.fixture
def stack() -> Iterator[tuple[postfix_stack.PostfixStack, SmtpSink, str]]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    # Not pytest's tmp_path: its parents are 0700, and Postfix's and the milters' unprivileged processes
    # must reach their files.
    tmp_path = Path(tempfile.mkdtemp(prefix="fwdmail-bench-stack-"))
    tmp_path.chmod(0o755)
    keys = postfix_stack.StackKeys.make(tmp_path / "keys", fwd.HOSTED_DOMAIN)
    dns = DnsHelper(fwd.DNS_RECORDS + keys.records()).start()
    capture = SmtpSink("127.0.0.1").start()
    instance = postfix_stack.PostfixStack(
        tmp_path, capture.port, fwd.ALIAS, fwd.DESTINATION, dns=dns.address, keys=keys,
        routes={fwd.CHECK_DOMAIN: capture.port}, extra_aliases={fwd.CHECK_ALIAS: f"inbox@{fwd.CHECK_DOMAIN}"})
    try:
        yield instance.start(), capture, dns.address
    finally:
        instance.stop()
        capture.stop()
        dns.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_postfix_stack_forwards_with_srs_and_a_valid_arc_set_and_signs_submissions(
        stack: tuple[postfix_stack.PostfixStack, SmtpSink, str]) -> None:
    instance, capture, dns_address = stack

    checks = check_postfix_stack(instance, capture, dns_address, messages=MESSAGES)

    assert [name for name, passed in checks.items() if not passed] == []
    assert len(checks) == 8
    assert len(instance.pids()) == 4  # Postfix's master, postsrsd, rspamd, OpenDKIM: all still up
