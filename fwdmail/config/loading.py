"""Reading the config file: TOML parsed, each value checked against its dataclass field's type, paths
anchored at the file's directory; and the effective settings as plain data with secrets masked.

Handles the administrator's file: unreadable, non-UTF-8, bad TOML, unknown keys and wrong types all raise
`ConfigError` with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

import idna

from fwdmail.config.checks import MAX_INT, MAX_SECONDS, ConfigError, _at_most
from fwdmail.config.root import Config


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list of strings"
    if origin is dict:
        return "a table of strings"
    return str(tp)


def _domain_key(name: str) -> str:
    """A table key that names a domain, in the lowercase A-label form the code looks up."""
    name = name.strip().lower().removesuffix(".")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            pass  # left as written; validate() names it
    return name


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotated type `tp`; convert lists to tuples."""
    bad = ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        _at_most(key, value, MAX_INT)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad
        _at_most(key, value, MAX_SECONDS, "a year, in seconds")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad
        out: dict[str, str] = {}
        written: dict[str, str] = {}
        for k, v in value.items():
            name = _domain_key(k)
            if name in out:
                raise ConfigError(f"{key}: {written[name]!r} and {k!r} are the same domain; keep one")
            out[name], written[name] = v, k
        return out
    raise bad


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{key}: unknown key{hint}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: must be a table [{key}]")
            kwargs[name] = _build(tp, value, f"{key}.")
        else:
            kwargs[name] = _coerce(key, tp, value)
    obj = cls(**kwargs)
    obj.validate(prefix.rstrip("."))
    return obj


def from_dict(data: dict[str, Any], base: Path | None = None) -> Config:
    """Build and validate a Config from parsed TOML; relative paths are taken relative to `base`."""
    cfg: Config = _build(Config, data, "")
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub):
            sub.validate(f.name)
    if base is not None:

        def anchored(value: str) -> str:
            return str(base / value) if value and not Path(value).is_absolute() else value

        cfg = dataclasses.replace(
            cfg, data_dir=anchored(cfg.data_dir),
            tls=dataclasses.replace(cfg.tls, cert=anchored(cfg.tls.cert), key=anchored(cfg.tls.key)),
            delivery=dataclasses.replace(cfg.delivery, tls_ca_file=anchored(cfg.delivery.tls_ca_file)),
            webhooks=dataclasses.replace(cfg.webhooks, ca_file=anchored(cfg.webhooks.ca_file)),
        )
    if cfg.delivery.tls_ca_file and not Path(cfg.delivery.tls_ca_file).is_file():
        raise ConfigError(f"delivery.tls_ca_file: no such file: {cfg.delivery.tls_ca_file!r}")
    return cfg


def load(path: str | Path | None) -> Config:
    """Read the TOML file at `path`, or return the defaults when `path` is None.

    Relative paths in a config file (data_dir, tls.cert, tls.key; the default data_dir too) are relative
    to the file's directory, so every command finds the same data whatever its working directory.
    """
    if path is None:
        return from_dict({})
    if not str(path).strip():
        raise ConfigError("--config: empty path (leave it out, and FWDMAIL_CONFIG unset, for the defaults)")
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return from_dict(data, p.absolute().parent)


def as_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data (tuples as lists), secrets masked."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}
    if out["srs"]["secret"]:
        out["srs"]["secret"] = "********"
    if out["metrics"]["token"]:
        out["metrics"]["token"] = "********"
    out["hostname"] = cfg.server_hostname
    return out

