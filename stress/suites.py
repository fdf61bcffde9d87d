"""Run the fault-injection and hostile-input test modules with pytest and count what they did.

Counts come from pytest's junit XML (test cases passed / failed / skipped per group) and, where the
modules print it, their own "hostile input summary" tally (sessions, faults, inputs, lost messages).
A module that does not exist (yet) is reported as missing, with zero counts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

GROUPS: dict[str, tuple[str, ...]] = {
    "faults": ("tests/faults/test_faults_destination.py", "tests/faults/test_faults_dns.py",
               "tests/faults/test_faults_store.py", "tests/faults/test_faults_process.py"),
    "hostile": ("tests/hostile/test_hostile_relay.py", "tests/hostile/test_hostile_smtp.py",
                "tests/hostile/test_fuzz_smtp.py"),
}
_TALLY_LINE = re.compile(r"^([a-z][a-z ]+?)\s{2,}(\d+)\s*$")


@dataclass
class ModuleResult:
    path: str
    status: str = "missing"  # missing | ran | error
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


@dataclass
class GroupResult:
    name: str
    modules: list[ModuleResult] = field(default_factory=list)
    tally: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return sum(m.passed for m in self.modules)

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.modules)

    @property
    def cases(self) -> int:
        return sum(m.passed + m.failed for m in self.modules)


def parse_junit(path: Path, result: ModuleResult) -> None:
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("skipped") is not None:
            result.skipped += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            result.failed += 1
            result.failures.append(name)
        else:
            result.passed += 1


def parse_tally(output: str) -> dict[str, int]:
    """The "hostile input summary" section pytest printed, as {name: value}."""
    tally: dict[str, int] = {}
    inside = False
    for line in output.splitlines():
        if "hostile input summary" in line:
            inside = True
            continue
        if inside:
            m = _TALLY_LINE.match(line)
            if m is None:
                if tally:
                    break
                continue
            tally[m.group(1).strip()] = tally.get(m.group(1).strip(), 0) + int(m.group(2))
    return tally


def run_pytest(module: str, junit: Path, repo: Path, timeout: float) -> str:
    """pytest on one module in its own process group; past `timeout` the group (pytest and the daemons
    it started) is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", module],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
        return f"{output}\n(killed after {timeout:.0f} s)"


def run_group(name: str, repo: Path, workdir: Path, timeout: float, log: Path) -> GroupResult:
    """Run each existing module of the group in its own pytest process (bounded by `timeout` each)."""
    group = GroupResult(name)
    for module in GROUPS[name]:
        result = ModuleResult(module)
        group.modules.append(result)
        if not (repo / module).is_file():
            continue
        junit = workdir / f"junit-{Path(module).stem}.xml"
        junit.unlink(missing_ok=True)
        started = time.monotonic()
        output = run_pytest(module, junit, repo, timeout)
        result.seconds = time.monotonic() - started
        with log.open("a") as f:
            f.write(f"===== {module}\n{output}\n")
        if junit.is_file():
            result.status = "ran"
            parse_junit(junit, result)
        else:
            result.status = "error"
        for key, value in parse_tally(output).items():
            group.tally[key] = group.tally.get(key, 0) + value
    return group
