"""Each process of `fwdmail serve` imports only what it uses (memory: a module, once imported, stays).

With `[mx] workers = 2`, the default SQLite store and no Redis: the MX worker never loads the HTTP side
(aiohttp's server, Jinja2, nh3, pyotp, the web pages), the submission service, the retention scheduler
(APScheduler), aiohttp's client (until an MTA-STS policy fetch or a webhook POST needs it),
prometheus-client (it relays its metrics to the serving process); neither process loads redis-py or rich
(the admin commands' tables). psycopg is not checked: peewee imports it as it loads wherever it is
installed (the `postgres` and test extras; a default install has none). Each process writes its own
`sys.modules` as it exits, through a `sitecustomize` put on its PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.daemon import REPO, WORKER_READY, Daemon

_SERVE_NEVER = ("redis", "rich")
_WORKER_NEVER = ("jinja2", "nh3", "pyotp", "aiohttp", "prometheus_client", "fwdmail.web", "apscheduler",
                 "fwdmail.submission", *_SERVE_NEVER)

_HOOK = """\
import atexit, os, sys

def _write():
    path = os.path.join(os.environ["FWDMAIL_TEST_MODULES"], f"{os.getpid()}.txt")
    with open(path, "w") as out:
        out.write(" ".join(sys.argv) + "\\n" + "\\n".join(sorted(sys.modules)))

atexit.register(_write)
"""


def among(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


def test_an_mx_worker_and_the_serving_process_import_only_what_they_use(tmp_path: Path) -> None:
    d = Daemon(tmp_path, {"mx": {"workers": 2}})
    d.cli("init")
    hook, reports = tmp_path / "hook", tmp_path / "modules"
    hook.mkdir()
    reports.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=f"{REPO}{os.pathsep}{hook}",
               FWDMAIL_TEST_MODULES=str(reports))
    with open(d.log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fwdmail", "--config", str(d.config_path), "serve"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not WORKER_READY.search(d.log_path.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, d.log_path.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, d.log_path.read_text()
    by_process = {}
    for report in reports.iterdir():
        argv, *modules = report.read_text().splitlines()
        by_process["worker" if "--mx-worker-fd" in argv else "serve"] = modules
    assert set(by_process) == {"serve", "worker"}
    assert "fwdmail.mx.service" in by_process["worker"] and "fwdmail.web.server" in by_process["serve"]
    assert among(by_process["worker"], _WORKER_NEVER) == []
    assert among(by_process["serve"], _SERVE_NEVER) == []
