"""The adapters that reach into aiosmtpd (daemon/smtpserver.py) and aiosmtplib (daemon/delivery.py).

An upgrade that moves a private member they rely on must fail here, by name, not deep inside a session;
and every reply the listeners send (ours and aiosmtpd's own, through the adapter) carries an RFC 3463
enhanced status code, as the ENHANCEDSTATUSCODES they advertise promises.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib import metadata
from pathlib import Path

import aiosmtpd.smtp
import aiosmtplib.protocol
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
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
    "handle_exception": ["self", "error"],
    "smtp_HELO": ["self", "hostname"],
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
    assert isinstance(reader._limit, int)  # the DATA reader swaps the line limit


def test_aiosmtplib_drain_helper_used_by_delivery() -> None:
    helper = getattr(aiosmtplib.protocol.SMTPProtocol, "_drain_helper", None)
    assert helper is not None, "aiosmtplib.protocol.SMTPProtocol._drain_helper is gone"
    assert inspect.iscoroutinefunction(helper) and _params(helper) == ["self"]
    assert "protocol._drain_helper()" in (ROOT / "fwdmail/daemon/delivery.py").read_text()


def test_every_private_aiosmtpd_member_used_is_listed_here() -> None:
    """A new reach into aiosmtpd must be added above (and so checked); only smtpserver.py reaches in."""
    async def made() -> aiosmtpd.smtp.SMTP:
        return aiosmtpd.smtp.SMTP(object(), hostname="h.test", loop=asyncio.get_running_loop())

    theirs = set(dir(aiosmtpd.smtp.SMTP)) | set(vars(asyncio.run(made()))) | {"_reader", "_writer"}
    source = (ROOT / "fwdmail/daemon/smtpserver.py").read_text()
    used = {n for n in re.findall(r"(?:self|super\(\)|server)\.(_[a-z]\w*)", source) if n in theirs}
    known = set(SMTP_METHODS) | set(SMTP_ATTRIBUTES) | {"_reader"}
    assert used <= known, f"private aiosmtpd members used but not checked here: {sorted(used - known)}"
    for path in (ROOT / "fwdmail").rglob("*.py"):
        if path.name != "smtpserver.py":
            imports = re.search(r"^\s*(?:from|import) aiosmtpd", path.read_text(), re.MULTILINE)
            assert imports is None, f"{path.name} imports aiosmtpd itself"
