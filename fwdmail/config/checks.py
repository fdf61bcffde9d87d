"""Shared checks for configuration values: host:port, host names, bounds, URLs quoted in errors.

Every value comes from the administrator's TOML file; a bad one raises `ConfigError` naming its key.
"""

from __future__ import annotations

import ipaddress
import re

import idna

# Every float key is a duration in seconds; past a year it is a typo, and far past it `now + duration`
# overflows the date range. Integer keys are counts and sizes that SQLite and the OS take as C ints.
MAX_SECONDS = 365 * 86400
MAX_INT = 2**31 - 1


class ConfigError(ValueError):
    """A configuration problem, worded for the administrator."""


def _host_port(key: str, value: str, *, min_port: int = 0) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; raise ConfigError naming `key` if malformed."""
    host, sep, port = value.rpartition(":")
    bad = ConfigError(f'{key}: expected "host:port" (IPv6 as "[addr]:port"), got {value!r}')
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise bad
    if not min_port <= int(port) <= 65535:
        raise ConfigError(f"{key}: port must be between {min_port} and 65535, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    elif not all(_HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")):
        raise bad
    return host, int(port)


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _ip_port(key: str, value: str) -> None:
    """A "host:port" whose host is an IP address (DNS servers cannot be named by name)."""
    host, _ = _host_port(key, value, min_port=1)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f'{key}: expected "ip:port" (IPv6 as "[addr]:port"), got {value!r}') from None


def _hostname(key: str, value: str) -> str:
    """Validate a host or domain name (IDN accepted); return its lowercase A-label form."""
    bad = ConfigError(f"{key}: not a valid host name: {value!r}")
    name = value.strip().removesuffix(".")
    if not name:
        raise bad
    try:
        ascii_name = name.lower() if name.isascii() else idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise bad from None
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        raise bad
    return ascii_name


def parse_host_port(value: str) -> tuple[str, int]:
    """Split an already validated "host:port" string."""
    return _host_port("address", value)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be greater than 0, got {value}")


def _at_most(key: str, value: float, limit: int, why: str = "") -> None:
    if value > limit:
        raise ConfigError(f"{key}: must be at most {limit}{f' ({why})' if why else ''}, got {value}")


def _shown_url(url: str) -> str:
    """`url` as an error may quote it: any password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    creds, _, host = netloc.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}{slash}{path}"
