"""A private Postfix instance on loopback: its own config and queue directories, never the system's.

One smtpd port takes MX traffic (a virtual alias domain, rewritten and relayed) and another takes
"submission" (STARTTLS offered, relaying allowed for 127.0.0.0/8 instead of SMTP AUTH: Postfix's SASL
needs Dovecot or Cyrus, which the bench does not set up). `transport_maps` sends everything to the sink.
Queue, delivery and in-flow control keep their defaults: the queue is Postfix's normal durable one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .procs import LOOPBACK, BenchError, free_port, wait_listening

POSTFIX = "/usr/sbin/postfix"
MAX_SMTPD = 1100
MESSAGE_SIZE_LIMIT = 60 * 1024 * 1024

SERVICES = """\
pickup    unix  n  -  n  60     1  pickup
cleanup   unix  n  -  n  -      0  cleanup
qmgr      unix  n  -  n  300    1  qmgr
tlsmgr    unix  -  -  n  1000?  1  tlsmgr
rewrite   unix  -  -  n  -      -  trivial-rewrite
bounce    unix  -  -  n  -      0  bounce
defer     unix  -  -  n  -      0  bounce
trace     unix  -  -  n  -      0  bounce
verify    unix  -  -  n  -      1  verify
flush     unix  n  -  n  1000?  0  flush
proxymap  unix  -  -  n  -      -  proxymap
smtp      unix  -  -  n  -      -  smtp
relay     unix  -  -  n  -      -  smtp
showq     unix  n  -  n  -      -  showq
error     unix  -  -  n  -      -  error
retry     unix  -  -  n  -      -  error
discard   unix  -  -  n  -      -  discard
anvil     unix  -  -  n  -      1  anvil
scache    unix  -  -  n  -      1  scache
postlog   unix-dgram n - n -    1  postlogd
"""


def self_signed_pair(directory: Path) -> tuple[Path, Path]:
    """A throwaway RSA-2048 certificate and key made with `openssl req`."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=postfix.bench.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


class Postfix:
    """Postfix with config, queue and data directories under `workdir`, forwarding to `sink_port`."""

    def __init__(self, workdir: Path, sink_port: int, alias: str, destination: str,
                 name: str = "postfix") -> None:
        self.root = workdir / name
        self.etc = self.root / "etc"
        self.queue = self.root / "queue"
        self.data = self.root / "data"
        self.sink_port = sink_port
        self.alias = alias
        self.destination = destination
        self.mx_port = free_port()
        self.submission_port = free_port()
        self.log_path = self.root / "postfix.log"

    def start(self, timeout: float = 30.0) -> Postfix:
        self._write_config()
        self._postfix("check")
        self._postfix("start")
        wait_listening(self.mx_port, timeout)
        wait_listening(self.submission_port, timeout)
        return self

    def stop(self) -> None:
        """Stop Postfix and remove the instance's directories."""
        self._halt()
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again, so no process of earlier runs is left (idle `smtpd` processes otherwise
        stay up to `max_idle`, 100 s). `postfix reload` does not do here: afterwards the master at times
        spawned no new `smtpd` while the listen queue filled."""
        self._halt()
        self._postfix("start")
        wait_listening(self.mx_port, timeout)
        wait_listening(self.submission_port, timeout)

    def _halt(self, timeout: float = 20.0) -> None:
        """`postfix stop`, then wait for the master to exit (SIGKILL it if it does not)."""
        master = self.master_pid()
        if master is None:
            return
        self._postfix("stop", check=False)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{master}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{master}").exists():
            os.kill(master, 9)

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queued(self) -> int:
        """Messages in the queue directories right now (0 once everything was delivered)."""
        count = 0
        for sub in ("maildrop", "incoming", "active", "deferred"):
            for _, _, files in os.walk(self.queue / sub):
                count += len(files)
        return count

    def warnings(self, last: int = 3) -> str:
        """The last warning/fatal/panic lines of Postfix's log, for a failed row's error."""
        marks = (" warning: ", " fatal: ", " panic: ")
        lines = [ln for ln in self.logs().splitlines() if any(m in ln for m in marks)]
        return " | ".join(lines[-last:])

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _postfix(self, command: str, check: bool = True) -> None:
        done = subprocess.run([POSTFIX, "-c", str(self.etc), command], capture_output=True, timeout=60)
        if check and done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise BenchError(f"postfix {command} failed ({done.returncode}): {output}\n{self.logs()[-2000:]}")

    def _write_config(self) -> None:
        for d in (self.etc, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.root.parent, self.root, self.etc):
            d.chmod(0o755)  # Postfix's unprivileged processes read their config here
        shutil.chown(self.data, user="postfix")
        cert, key = self_signed_pair(self.etc)
        (self.etc / "virtual").write_text(self._virtual())
        (self.etc / "transport").write_text(self._transport())
        settings = self._settings(cert, key)
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.etc / "master.cf").write_text(self._master_cf())

    def _virtual(self) -> str:
        return f"{self.alias} {self.destination}\n"

    def _transport(self) -> str:
        return f"* smtp:[{LOOPBACK}]:{self.sink_port}\n"

    def _settings(self, cert: Path, key: Path) -> dict[str, object]:
        domain = self.alias.rpartition("@")[2]
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "myhostname": "postfix.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "smtpd_relay_restrictions": "permit_mynetworks, defer_unauth_destination",
            "virtual_alias_domains": domain,
            "virtual_alias_maps": f"texthash:{self.etc / 'virtual'}",
            "transport_maps": f"texthash:{self.etc / 'transport'}",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "message_size_limit": MESSAGE_SIZE_LIMIT,
            "smtpd_tls_cert_file": cert,
            "smtpd_tls_key_file": key,
            "smtpd_tls_security_level": "may",
            "biff": "no",
            "maillog_file_prefixes": self.root,
            "maillog_file": self.log_path,
        }
        return settings

    def _master_cf(self) -> str:
        ports = (self.mx_port, self.submission_port)
        return "".join(f"{LOOPBACK}:{port} inet n - n - {MAX_SMTPD} smtpd\n" for port in ports) + SERVICES
