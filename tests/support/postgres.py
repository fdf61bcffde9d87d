"""A private PostgreSQL server for the tests: initdb in a temporary directory, listening on 127.0.0.1 and a
free port with its unix socket in that directory, stopped (by PID) when done.

initdb and postgres refuse to run as root; as root they run as the `postgres` system user on a directory
that user owns. Nothing here is the packaged cluster: Debian's service is never started or touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server's bin directory on this machine, or None when none is installed."""
    def version(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One postgres process; `new_database()` gives each test its own empty database."""

    user = "fwdmail"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="fwdmail-pg-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o700)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        subprocess.run(
            [*self._as, str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=START_TIMEOUT,
        )
        self._spawn()

    def _spawn(self) -> None:
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the server's own log, kept with it
        self.proc = subprocess.Popen(
            [*self._as, str(self.bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", str(self.root), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=50"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'postgres.log').read_text()[-2000:]}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pg_ctl_stop(self) -> None:
        """`pg_ctl stop -m fast`, as an admin stops the server: every client's connection breaks and new
        ones are refused until `restart`."""
        subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast",
                        "-w", "-t", str(int(STOP_TIMEOUT))],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=STOP_TIMEOUT + 5)
        if self.proc is not None:
            self.proc.wait(STOP_TIMEOUT)
            self.proc = None

    def restart(self) -> None:
        """Start the stopped server again on the same data dir and port."""
        self._spawn()

    def new_database(self) -> str:
        """A fresh empty database's URL (copied from template1: a few ms with fsync off)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        return self.url(name)

    def empty_database(self, url: str) -> None:
        """Drop everything in `url`'s database (its public schema), much faster than a new database."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '5s'")  # a connection a test left open fails it, not hangs
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            # The postgres process is the session leader runuser started; SIGINT is its "fast" shutdown.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(bindir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
