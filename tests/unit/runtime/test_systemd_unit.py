"""contrib/fwdmail.service: the readiness protocol `serve` speaks, the hardening and the bind capability,
and `systemd-analyze verify` finding nothing to say about it (skipped only where systemd-analyze is
not installed)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[3] / "contrib" / "fwdmail.service"
EXEC = "/opt/fwdmail/bin/fwdmail"


def settings() -> dict[str, list[str]]:
    """Every key of [Service] with all its values (a key may be given more than once)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_the_unit_speaks_sd_notify_and_is_hardened() -> None:
    service = settings()
    expected = {
        "Type": "notify", "NotifyAccess": "main", "User": "fwdmail", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/fwdmail", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallFilter": "@system-service",
        "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes", "RestrictNamespaces": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    }
    assert {k: service.get(k, [""])[-1] for k in expected} == expected
    assert int(service["LimitNOFILE"][-1]) >= 65536
    assert service["ExecStart"][-1].split()[0] == EXEC and service["ExecStart"][-1].endswith(" serve")
    configparser.ConfigParser(strict=False, interpolation=None).read_string(UNIT.read_text())


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify wants ExecStart's program to exist: point it at this interpreter, nothing else changes
    copy = tmp_path / "fwdmail.service"
    copy.write_text(UNIT.read_text().replace(EXEC, f"{sys.executable} -m fwdmail"))
    proc = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
