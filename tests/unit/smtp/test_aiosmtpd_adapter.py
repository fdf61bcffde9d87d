"""The adapters that reach into aiosmtpd (fwdmail/smtp/server.py) and aiosmtplib (fwdmail/smtp/client.py).

An upgrade that moves a private member they rely on must fail here, by name, not deep inside a session;
and every reply the listeners send (ours and aiosmtpd's own, through the adapter) carries an RFC 3463
enhanced status code, as the ENHANCEDSTATUSCODES they advertise promises.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import aiosmtpd.smtp
import aiosmtplib.protocol
import pytest
from packaging.requirements import Requirement

from fwdmail.smtp import replies
from tests.support.daemon import Daemon
from tests.support.hostile import Session, no_tls_check

ROOT = Path(__file__).resolve().parents[3]
ENHANCED = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |\r\n)")

# What the adapters use of aiosmtpd's SMTP class: method -> its parameters (as inspect shows them).
SMTP_METHODS = {
    "_handle_client": ["self"],
    "_call_handler_hook": ["self", "command", "args"],
    "_create_envelope": ["self"],
    "_getaddr": ["self", "arg"],
    "_set_rset_state": ["self"],
    "_set_post_data_state": ["self"],
    "_reset_timeout": ["self", "duration"],
    "_cb_client_connected": ["self", "reader", "writer"],
    "push": ["self", "status"],
    "challenge_auth": ["self", "challenge", "encode_to_b64", "log_client_response"],
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "error"],
    "eof_received": ["self"],
    "handle_exception": ["self", "error"],
    "smtp_HELO": ["self", "hostname"],
    "smtp_STARTTLS": ["self", "arg"],
    "smtp_NOOP": ["self", "arg"],
    "smtp_RSET": ["self", "arg"],
    "smtp_HELP": ["self", "arg"],
    "smtp_VRFY": ["self", "arg"],
}
# ... the instance attributes it reads or replaces, and their type right after __init__.
SMTP_ATTRIBUTES = {
    "_handle_hooks": dict,
    "_smtp_methods": dict,
    "_auth_methods": dict,
    "_auth_require_tls": bool,
    "_tls_protocol": type(None),
    "_timeout_duration": int | float,
    "command_size_limits": dict,
}
# ... and lines of aiosmtpd's code whose behaviour the adapter builds on (quoted as written there).
SMTP_SOURCE = {
    "_handle_client": [
        "method = self._smtp_methods.get(command)",  # _Commands: the unknown-command fallback
        # the greeting is the first push
        "await self.push('220 {} {}'.format(self.hostname, self.__ident__))",
    ],
    "_cb_client_connected": ["self._reader = reader"],
    "__init__": ["for m in dir(self)"],  # SmtpServer.__dir__ keeps that table small
}


def _params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def _pin(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == name)


@pytest.mark.parametrize("name", ["aiosmtpd", "aiosmtplib"])
def test_the_installed_release_is_within_the_tested_pin(name: str) -> None:
    pin = _pin(name)
    assert pin.specifier and any(s.operator == "<" for s in pin.specifier), f"{name} has no upper bound"
    assert metadata.version(name) in pin.specifier, f"{name} {metadata.version(name)} is outside {pin}"


@pytest.mark.parametrize("name", sorted(SMTP_METHODS))
def test_aiosmtpd_methods_the_adapter_overrides_or_calls(name: str) -> None:
    method = getattr(aiosmtpd.smtp.SMTP, name, None)
    assert method is not None, f"aiosmtpd.smtp.SMTP.{name} is gone"
    assert _params(method) == SMTP_METHODS[name], f"aiosmtpd.smtp.SMTP.{name} changed shape"
    if name.startswith(("smtp_", "_handle", "_call", "push", "challenge", "handle_")):
        assert inspect.iscoroutinefunction(method), f"aiosmtpd.smtp.SMTP.{name} is no longer async"


@pytest.mark.parametrize(("name", "lines"), sorted(SMTP_SOURCE.items()))
def test_aiosmtpd_code_the_adapter_builds_on(name: str, lines: list[str]) -> None:
    source = inspect.getsource(getattr(aiosmtpd.smtp.SMTP, name))
    for line in lines:
        assert line in source, f"aiosmtpd.smtp.SMTP.{name} no longer does {line!r}"


def test_aiosmtpd_attributes_and_names_the_adapter_uses() -> None:
    async def made() -> tuple[aiosmtpd.smtp.SMTP, asyncio.StreamReader]:
        return aiosmtpd.smtp.SMTP(object(), hostname="h.test", loop=asyncio.get_running_loop()), \
            asyncio.StreamReader()

    server, reader = asyncio.run(made())
    for name, kind in SMTP_ATTRIBUTES.items():
        assert isinstance(getattr(server, name, None), kind), f"SMTP().{name} is not {kind}"
    for name in ("MISSING", "Envelope", "Session", "TLSSetupException", "syntax", "ALLOWED_BEFORE_STARTTLS"):
        assert hasattr(aiosmtpd.smtp, name), f"aiosmtpd.smtp.{name} is gone"
    assert isinstance(aiosmtpd.smtp.SMTP.command_size_limit, int)
    assert isinstance(aiosmtpd.smtp.SMTP.local_part_limit, int)
    assert isinstance(reader._limit, int)  # the DATA reader (smtp/data.py) swaps the line limit


def test_aiosmtplib_drain_helper_used_by_delivery() -> None:
    helper = getattr(aiosmtplib.protocol.SMTPProtocol, "_drain_helper", None)
    assert helper is not None, "aiosmtplib.protocol.SMTPProtocol._drain_helper is gone"
    assert inspect.iscoroutinefunction(helper) and _params(helper) == ["self"]
    assert "protocol._drain_helper()" in (ROOT / "fwdmail/smtp/client.py").read_text()


def test_every_private_aiosmtpd_member_used_is_listed_here() -> None:
    """A new reach into aiosmtpd must be added above (and so checked); only smtp/server.py reaches in."""
    async def made() -> aiosmtpd.smtp.SMTP:
        return aiosmtpd.smtp.SMTP(object(), hostname="h.test", loop=asyncio.get_running_loop())

    theirs = set(dir(aiosmtpd.smtp.SMTP)) | set(vars(asyncio.run(made()))) | {"_reader", "_writer"}
    source = (ROOT / "fwdmail/smtp/server.py").read_text()
    used = {n for n in re.findall(r"(?:self|super\(\)|server)\.(_[a-z]\w*)", source) if n in theirs}
    known = set(SMTP_METHODS) | set(SMTP_ATTRIBUTES) | {"_reader"}
    assert used <= known, f"private aiosmtpd members used but not checked here: {sorted(used - known)}"
    for path in (ROOT / "fwdmail").rglob("*.py"):
        if path != ROOT / "fwdmail/smtp/server.py":
            imports = re.search(r"^\s*(?:from|import) aiosmtpd", path.read_text(), re.MULTILINE)
            assert imports is None, f"{path.name} imports aiosmtpd itself"


# every reply carries an enhanced status code (RFC 2034, RFC 3463)

EXEMPT = object()  # a reply RFC 2034 exempts: the greeting and the answers to HELO and EHLO


def _enhanced_ok(line: bytes) -> bool:
    return line[:1] == b"3" or ENHANCED.match(line) is not None


def test_every_reply_constant_has_an_enhanced_code() -> None:
    for name, value in vars(replies).items():
        if isinstance(value, replies.SmtpError):
            text = value.reply
        elif isinstance(value, str) and re.match(r"[245]\d\d ", value):
            text = value.format(queue_id="x")
        else:
            continue
        assert _enhanced_ok(text.encode() + b"\r\n"), f"replies.{name}: {text!r}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("adapter"), {"abuse": {"max_errors_per_session": 1000},
                                                    "submission": {"max_errors_per_session": 1000}}).start()
    yield d
    d.stop()


def _walk(s: Session, commands: list[bytes | tuple[bytes, object]]) -> list[bytes]:
    """Send each command, check each reply line has an enhanced code (unless marked EXEMPT); return
    the lines that do not."""
    missing = []
    for item in commands:
        command, exempt = item if isinstance(item, tuple) else (item, None)
        s.send(command + b"\r\n")
        _, lines = s.reply()
        if exempt is not EXEMPT:
            missing += [line for line in lines if not _enhanced_ok(line)]
    return missing


COMMON = [
    b"NOOP", b"NOOP ignored", b"RSET", b"RSET now", b"HELP", b"HELP NOOP", b"HELP BOGUS", b"VRFY",
    b"VRFY <someone@example.test>", b"VRFY <a@b@c>", b"EXPN list", b"BOGUS", b"", b"\xff\xfe", b"X" * 2000,
    b"STARTTLS now", b"QUIT now", b"EHLO", b"HELO",
]


def test_the_mx_answers_every_command_with_an_enhanced_code(daemon: Daemon) -> None:
    with Session(daemon.mx_port) as s:
        missing = _walk(s, [
            b"MAIL FROM:<a@src.test>", b"RCPT TO:<x@ours.test>", b"DATA", b"AUTH PLAIN",
            (b"HELO client.test", EXEMPT), b"AUTH PLAIN", *COMMON, (b"EHLO client.test", EXEMPT),
            b"AUTH PLAIN", b"AUTH", b"MAIL", b"MAIL FROM:<a@src.test> BODY=9BIT",
            b"MAIL FROM:<a@src.test> FOO=bar", b"MAIL FROM:<a@src.test> SIZE=999999999999",
            b"MAIL FROM:<a@src.test> SMTPUTF8=yes", b"RCPT TO:<x@ours.test>", b"DATA now", b"DATA",
            b"MAIL FROM:<a@src.test>", b"MAIL FROM:<b@src.test>", b"RCPT TO:<nobody@nowhere.test>",
            b"STARTTLS",
        ])
        s.starttls(no_tls_check())
        missing += _walk(s, [b"NOOP", (b"EHLO client.test", EXEMPT), b"MAIL FROM:<a@src.test>", b"QUIT"])
        assert s.closed()
    assert not missing, missing


def test_submission_answers_every_command_with_an_enhanced_code(daemon: Daemon) -> None:
    with Session(daemon.submission_port) as s:
        s.send(b"EHLO client.test\r\n")
        assert b"250-ENHANCEDSTATUSCODES\r\n" in s.reply()[1]
        missing = _walk(s, [b"MAIL FROM:<a@src.test>", b"AUTH PLAIN", b"HELP", b"VRFY x", *COMMON,
                            b"STARTTLS"])
        s.starttls(no_tls_check())
        missing += _walk(s, [(b"EHLO client.test", EXEMPT), *COMMON, (b"EHLO client.test", EXEMPT),
                             b"MAIL FROM:<a@src.test>", b"RCPT TO:<x@dest.test>", b"DATA", b"AUTH",
                             b"AUTH PLAIN a b", b"AUTH BOGUS", b"AUTH PLAIN !!!", b"AUTH PLAIN AHgAeA=="])
    with Session(daemon.submission_tls_port, tls=no_tls_check()) as s:
        missing += _walk(s, [*COMMON, (b"EHLO client.test", EXEMPT), b"STARTTLS", b"MAIL FROM:<a@src.test>",
                             b"QUIT"])
        assert s.closed()
    assert not missing, missing


@pytest.mark.parametrize("listener", ["mx", "submission"])
def test_starttls_inside_tls_is_refused_and_the_session_goes_on(daemon: Daemon, listener: str) -> None:
    """aiosmtpd answered 220 and wrapped TLS in TLS, which failed with a traceback in the log."""
    start = len(daemon.logs())
    with Session(daemon.mx_port if listener == "mx" else daemon.submission_port, timeout=10) as s:
        s.cmd(b"EHLO client.test")
        assert s.cmd(b"STARTTLS") == 220
        s.starttls(no_tls_check())
        s.cmd(b"EHLO client.test")
        assert s.text(b"STARTTLS") == (503, b"5.5.1 TLS already active")
        assert s.cmd(b"NOOP") == 250
    assert "Traceback" not in daemon.logs()[start:]
