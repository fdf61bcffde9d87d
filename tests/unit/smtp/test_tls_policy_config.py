"""`[delivery] tls_policy`, `[delivery.policy]` and the MTA-STS keys: each bad value is one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fwdmail.config import ConfigError, from_dict


def error(delivery: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as exc:
        from_dict({"delivery": delivery})
    return str(exc.value)


def test_defaults() -> None:
    cfg = from_dict({}).delivery
    assert (cfg.tls_policy, cfg.policy, cfg.tls_ca_file, cfg.mta_sts_port) == ("mta-sts+dane", {}, "", 443)
    assert cfg.mta_sts_allow_private is False


def test_values() -> None:
    cfg = from_dict({"delivery": {"tls_policy": "verify", "policy": {"A.example": "opportunistic",
                                                                     "*": "mta-sts+dane"}}}).delivery
    assert cfg.policy == {"a.example": "opportunistic", "*": "mta-sts+dane"}


@pytest.mark.parametrize(("delivery", "expected"), [
    ({"tls_policy": "dane"}, "delivery.tls_policy: must be one of opportunistic, mta-sts+dane, verify, "
                             "got 'dane'"),
    ({"policy": {"a.example": "strict"}}, 'delivery.policy."a.example": must be one of'),
    ({"policy": {"not a domain": "verify"}}, "delivery.policy: not a valid host name"),
    ({"mta_sts_timeout": 0}, "delivery.mta_sts_timeout: must be greater than 0"),
    ({"mta_sts_port": 0}, "delivery.mta_sts_port: must be a TCP port"),
    ({"mta_sts_allow_private": "yes"}, "delivery.mta_sts_allow_private: must be true or false"),
    ({"tls_ca_file": "/nonexistent/ca.pem"}, "delivery.tls_ca_file: no such file"),
])
def test_bad_values(delivery: dict[str, Any], expected: str) -> None:
    message = error(delivery)
    assert message.startswith(expected) and "\n" not in message, message


def test_a_relative_ca_file_is_found_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    cfg = from_dict({"delivery": {"tls_ca_file": "ca.pem"}}, base=tmp_path)
    assert cfg.delivery.tls_ca_file == str(tmp_path / "ca.pem")
