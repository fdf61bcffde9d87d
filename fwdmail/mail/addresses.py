"""Parsing and normalising mail addresses, domains and alias specs.

Handles untrusted input (SMTP envelope addresses, CLI arguments, webhook URLs given as
destinations). Anything that is not a plain
`local@domain` with a dot-atom local part is refused: no quoted locals, no source routes, no second `@`,
no control, invisible-format or bidi characters in the parts kept as written (local parts, regex
patterns: they would hide or reorder what an admin later reads). Domains go through IDNA (UTS 46), which
refuses those characters or maps the invisible ones away.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna
import regex

# RFC 5322 atext, plus any non-ASCII character (RFC 6531 SMTPUTF8).
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
SUBSTITUTION = re.compile(r"\$[1-9]")
# C0/C1 controls, format characters (bidi overrides and isolates, zero-width ones), line and paragraph
# separators, lone surrogates: refused in local parts, shown as escapes by the CLI (fwdmail.cli.render).
HIDDEN_CHARS = regex.compile(r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]")


class AddressError(ValueError):
    """An address, domain or alias spec that fwdmail will not accept; the message says why."""


@dataclass(frozen=True)
class Address:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def _require_utf8(what: str, value: str) -> None:
    """Refuse text that cannot be UTF-8 (undecodable bytes surface as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AddressError(f"invalid {what} {value!r}: not valid UTF-8") from None


def _refuse_hidden(what: str, value: str, part: str) -> None:
    """Refuse a part kept as written (local part, regex pattern) that holds a hidden character."""
    if HIDDEN_CHARS.search(part):
        raise AddressError(f"invalid {what} {value!r}: control, invisible or bidi characters are refused")


def normalize_domain(value: str) -> str:
    """Lowercase A-label form of a domain name (IDN accepted); raise AddressError if invalid."""
    _require_utf8("domain", value)
    name = value.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise AddressError("empty domain")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise AddressError(f"invalid domain {value!r}: {exc}") from None
    name = name.lower()
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(f"invalid domain {value!r}")
    for label in labels:
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                raise AddressError(f"invalid domain {value!r}: bad IDN label {label!r}") from None
    if labels[-1].isdigit():
        raise AddressError(f"invalid domain {value!r}: numeric top-level label")
    return name


def parse_address(value: str) -> Address:
    """Parse `local@domain`; the domain is normalised, the local part kept as written."""
    _require_utf8("address", value)
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text or "@" not in text:
        raise AddressError(f"invalid address {value!r}: no domain")
    if text.startswith("@") and ":" in text:
        raise AddressError(f"invalid address {value!r}: source routes are not accepted")
    if text.startswith("@"):
        raise AddressError(f"invalid address {value!r}: empty local part")
    if text.startswith('"') or "\\" in text:
        raise AddressError(f"invalid address {value!r}: quoted local parts are not accepted")
    local, _, domain = text.rpartition("@")
    if "@" in local:
        raise AddressError(f"invalid address {value!r}: more than one @")
    _refuse_hidden("address", value, local)
    if any(c in text for c in " \t\r\n\x00<>()[],;:"):
        raise AddressError(f"invalid address {value!r}")
    if len(local.encode()) > 64 or not _DOT_ATOM.fullmatch(local):
        raise AddressError(f"invalid address {value!r}: bad local part")
    if not domain:
        raise AddressError(f"invalid address {value!r}: no domain")
    if domain.endswith("."):
        raise AddressError(f"invalid address {value!r}: trailing dot in domain")
    return Address(local, normalize_domain(domain))


def normalize_address(value: str) -> str:
    """`parse_address` as a string."""
    return str(parse_address(value))


@dataclass(frozen=True)
class AliasSpec:
    kind: str  # exact | catch-all | regex
    local: str  # lowercase local part, "*", or the regex pattern
    domain: str

    @property
    def address(self) -> str:
        if self.kind == "regex":
            return f"/{self.local}/@{self.domain}"
        return f"{self.local}@{self.domain}"


def parse_alias_spec(value: str) -> AliasSpec:
    """Parse an alias as the admin writes it: `user@dom`, `*@dom` (catch-all) or `/regex/@dom`."""
    _require_utf8("alias", value)
    text = value.strip()
    if text.startswith("/"):
        end = text.rfind("/@")
        if end <= 0:
            raise AddressError(f"invalid regex alias {value!r}: write it as /pattern/@domain")
        pattern = text[1:end]
        if not pattern:
            raise AddressError(f"invalid regex alias {value!r}: empty pattern")
        _refuse_hidden("regex alias", value, pattern)
        try:
            regex.compile(pattern)  # as the MX matches it (fwdmail.policy.routing)
        except regex.error as exc:
            raise AddressError(f"invalid regex alias {value!r}: {exc}") from None
        return AliasSpec("regex", pattern, normalize_domain(text[end + 2:]))
    if text.startswith("*@"):
        return AliasSpec("catch-all", "*", normalize_domain(text[2:]))
    addr = parse_address(text)
    if "+" in addr.local:
        raise AddressError(f"invalid alias {value!r}: '+' is kept for plus-addressing (user+tag@)")
    return AliasSpec("exact", addr.local.lower(), addr.domain)


WEBHOOK_SCHEME = "https://"
_URL_MAX = 2000
_URL_REST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")  # RFC 3986 path and query characters


def is_webhook(destination: str) -> bool:
    """Whether a destination is a webhook URL (not a mail address)."""
    return destination[:8].lower() == WEBHOOK_SCHEME


def parse_webhook_url(value: str) -> str:
    """Validate an `https://host[:port]/path?query` webhook destination; the host is normalised (IDNA,
    lowercase) or an IP literal, the rest kept as written. No credentials, fragment or plain http."""
    _require_utf8("webhook URL", value)
    text = value.strip()
    if text[:7].lower() == "http://":
        raise AddressError(f"invalid webhook URL {value!r}: only https:// is accepted")
    if not is_webhook(text):
        raise AddressError(f"invalid webhook URL {value!r}: it must start with https://")
    if len(text) > _URL_MAX:
        raise AddressError(f"invalid webhook URL: longer than {_URL_MAX} characters")
    rest = text[len(WEBHOOK_SCHEME):]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "#" in tail or not _URL_REST.fullmatch(tail):
        raise AddressError(f"invalid webhook URL {value!r}: bad characters in its path or query")
    if "@" in authority:
        raise AddressError(f"invalid webhook URL {value!r}: credentials in the URL are not accepted")
    host, port = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        host, port = authority[1:end] if end > 0 else "", authority[end + 1:] if end > 0 else ""
        try:
            host = "[" + str(ipaddress.IPv6Address(host)) + "]"
        except ValueError:
            raise AddressError(f"invalid webhook URL {value!r}: bad IPv6 address") from None
    elif ":" in authority:
        host, _, port = authority.rpartition(":")
        port = ":" + port
    if port:
        digits = port[1:]
        if not port.startswith(":") or not digits.isdigit() or not 1 <= int(digits) <= 65535:
            raise AddressError(f"invalid webhook URL {value!r}: bad port")
        port = f":{int(digits)}"
    if not host.startswith("["):
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            host = normalize_domain(host)
    return f"{WEBHOOK_SCHEME}{host}{port}{tail or '/'}"


def parse_destination(value: str) -> str:
    """One destination: a mail address (domain normalised) or an https:// webhook URL."""
    text = value.strip()
    if is_webhook(text) or text[:7].lower() == "http://":
        return parse_webhook_url(text)
    return normalize_address(text)


def parse_destinations(values: list[str] | tuple[str, ...]) -> list[str]:
    """Validate 1-10 destinations (addresses or webhook URLs), de-duplicated (addresses
    case-insensitively), order kept.

    A destination's local part may contain `$1`..`$9` (regex alias substitutions); it is validated
    with the placeholders standing in for plain characters. Domains are kept in A-label form.
    """
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        norm = parse_destination(value)
        key = norm if is_webhook(norm) else norm.lower()
        if key not in seen:
            seen.add(key)
            out.append(norm)
    if not 1 <= len(out) <= 10:
        raise AddressError(f"an alias needs 1 to 10 destinations, got {len(out)}")
    return out
