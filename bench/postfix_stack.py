"""The `postfix-stack` anchor: Postfix as a Debian self-hoster runs it for forwarding, private, on loopback.

The private Postfix of bench/postfix.py, plus:
- postsrsd (SRS): its two TCP lookup tables as `sender_canonical_maps` / `recipient_canonical_maps`;
- rspamd as the MX listener's milter (proxy worker in milter mode, one normal worker behind it): SPF, DKIM,
  DMARC verification, Authentication-Results, and an ARC seal with the forwarding domain's RSA-2048 key.
  Its config is the packaged one with a private LOCAL_CONFDIR (templates in bench/rspamd/), DBDIR, RUNDIR
  and log; DNS goes to the bench's loopback server; modules that need Redis or the network are off;
- OpenDKIM as the submission listener's milter (signing mode, RSA-2048), and SMTP AUTH there through
  Cyrus SASL with a private sasldb2 (auxprop: no saslauthd or other network service).
Nothing it reads comes from outside the bench: the input is the bench's own generated messages.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import fwd
from .postfix import MAX_SMTPD, SERVICES, Postfix
from .procs import LOOPBACK, BenchError, free_port, stop_process, wait_listening

RSPAMD = "/usr/bin/rspamd"
POSTSRSD = "/usr/sbin/postsrsd"
OPENDKIM = "/usr/sbin/opendkim"
SASLPASSWD2 = "/usr/sbin/saslpasswd2"
TOOLS = (RSPAMD, POSTSRSD, OPENDKIM, SASLPASSWD2)
"""Debian packages rspamd, postsrsd, opendkim and sasl2-bin (plus libsasl2-modules for PLAIN)."""

TEMPLATES = Path(__file__).with_name("rspamd")
ARC_SELECTOR = "arc"
DKIM_SELECTOR = "pfx"
SRS_DOMAIN = "srs.bench.test"

DISABLED_MODULES = (
    "fuzzy_check", "rbl", "phishing", "multimap", "whitelist", "asn", "greylist", "ratelimit", "replies",
    "url_redirector", "neural", "history_redis", "reputation", "dcc", "external_services", "antivirus",
    "elastic", "clickhouse", "metadata_exporter", "p0f", "spamassassin", "emails", "hfilter",
    "once_received", "mx_check", "bimi",
)
"""rspamd modules switched off: each needs Redis, a network service, or DNS lookups other than the sender
checks (RBLs, ASN, HELO checks) that the bench's loopback DNS cannot answer and fwdmail does not do."""


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not os.access(t, os.X_OK)]


@dataclass(frozen=True)
class DomainKey:
    """An RSA-2048 private key file and the TXT record that publishes its public half."""

    path: Path
    name: str
    value: str


def make_key(directory: Path, domain: str, selector: str) -> DomainKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / f"{selector}.{domain}.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return DomainKey(path, f"{selector}._domainkey.{domain}",
                     f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")


@dataclass(frozen=True)
class StackKeys:
    arc: DomainKey
    dkim: DomainKey

    @classmethod
    def make(cls, directory: Path, domain: str) -> StackKeys:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        return cls(make_key(directory, domain, ARC_SELECTOR), make_key(directory, domain, DKIM_SELECTOR))

    def records(self) -> list[tuple[str, str, str]]:
        """For the loopback DNS: what rspamd's ARC seal and OpenDKIM's signature verify against."""
        return [(self.arc.name, "TXT", self.arc.value), (self.dkim.name, "TXT", self.dkim.value)]


def render_templates(target: Path, values: dict[str, str]) -> None:
    """bench/rspamd/{local.d,override.d} with `@name@` filled in, plus one `enabled = false` per module."""
    for sub in ("local.d", "override.d"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        for template in sorted((TEMPLATES / sub).iterdir()):
            text = template.read_text()
            for name, value in values.items():
                text = text.replace(f"@{name}@", value)
            if "@" in text.replace("@@", ""):
                raise BenchError(f"{template}: unfilled placeholder")
            (target / sub / template.name).write_text(text)
    for module in DISABLED_MODULES:
        (target / "local.d" / f"{module}.conf").write_text("enabled = false;\n")


class PostfixStack(Postfix):
    """Private Postfix + postsrsd + rspamd (MX milter) + OpenDKIM and Cyrus SASL (submission)."""

    def __init__(self, workdir: Path, sink_port: int, alias: str, destination: str, *, dns: str,
                 keys: StackKeys, routes: dict[str, int] | None = None,
                 extra_aliases: dict[str, str] | None = None) -> None:
        super().__init__(workdir, sink_port, alias, destination, name="postfix-stack")
        self.domain = alias.rpartition("@")[2]
        self.dns = dns
        self.keys = keys
        self.routes = routes or {}
        """Domain -> loopback port, before the catch-all route to the sink (the sanity check's capture)."""
        self.extra_aliases = extra_aliases or {}
        self.srs_forward, self.srs_reverse = free_port(), free_port()
        self.rspamd_proxy, self.rspamd_normal = free_port(), free_port()
        self.opendkim_port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.helpers: dict[str, subprocess.Popen[bytes]] = {}
        self.opendkim_dir: Path | None = None
        self.sasl_dir = self.etc / "sasl"
        """Debian's Postfix reads smtpd.conf from $config_directory/sasl, not cyrus_sasl_config_path."""

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> PostfixStack:
        for d in (self.root.parent, self.root):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        try:
            self._start_postsrsd(timeout)
            self._start_rspamd(timeout)
            self._start_opendkim(timeout)
            self._write_sasldb()
            super().start(timeout)
        except BaseException:
            self._stop_helpers()
            raise
        return self

    def stop(self) -> None:
        self._halt()
        self._stop_helpers()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.opendkim_dir is not None:
            shutil.rmtree(self.opendkim_dir, ignore_errors=True)

    def _stop_helpers(self) -> None:
        for proc in self.helpers.values():
            stop_process(proc, timeout=20)

    def pids(self) -> tuple[int, ...]:
        """Postfix's master and each helper daemon: the roots of the process trees measured as one server."""
        master = self.master_pid()
        if master is None:
            raise BenchError("Postfix has no master.pid")
        dead = [name for name, proc in self.helpers.items() if proc.poll() is not None]
        if dead:
            raise BenchError(f"{', '.join(dead)} exited: {self.helper_logs()[-1500:]}")
        return (master, *(proc.pid for proc in self.helpers.values()))

    def helper_logs(self) -> str:
        parts = []
        for name in ("postsrsd", "rspamd", "opendkim"):
            path = self.root / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def _spawn(self, name: str, args: list[str], ports: tuple[int, ...], timeout: float) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        self.helpers[name] = proc
        try:
            for port in ports:
                wait_listening(port, timeout, proc)
        except BenchError as exc:
            raise BenchError(f"{name}: {exc}\n{self.helper_logs()[-2000:]}") from None

    # ------------------------------------------------------------------ helpers
    def _start_postsrsd(self, timeout: float) -> None:
        secret = self.root / "postsrsd.secret"
        secret.write_text(secrets.token_urlsafe(32) + "\n")
        secret.chmod(0o600)
        self._spawn("postsrsd", [
            POSTSRSD, f"-s{secret}", f"-d{SRS_DOMAIN}", f"-l{LOOPBACK}", "-4", f"-f{self.srs_forward}",
            f"-r{self.srs_reverse}", f"-X{self.domain}", "-upostsrsd",
        ], (self.srs_forward, self.srs_reverse), timeout)

    def _start_rspamd(self, timeout: float) -> None:
        confdir, dbdir, rundir = self.root / "rspamd-local", self.root / "rspamd-db", self.root / "rspamd-run"
        render_templates(confdir, {
            "dns": self.dns, "normal_port": str(self.rspamd_normal), "proxy_port": str(self.rspamd_proxy),
            "normal_workers": str(fwd.mx_workers()),
            "log": str(self.root / "rspamd.log"), "arc_domain": self.domain,
            "arc_key": str(self.keys.arc.path), "arc_selector": ARC_SELECTOR,
        })
        for d in (dbdir, rundir):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, user="_rspamd", group="_rspamd")
        (self.root / "rspamd.log").touch()
        shutil.chown(self.root / "rspamd.log", user="_rspamd", group="_rspamd")
        shutil.chown(self.keys.arc.path, user="_rspamd", group="_rspamd")
        self._spawn("rspamd", [
            RSPAMD, "-f", "-c", "/etc/rspamd/rspamd.conf", "-u", "_rspamd", "-g", "_rspamd",
            "-p", str(rundir / "rspamd.pid"), f"--var=LOCAL_CONFDIR={confdir}", f"--var=DBDIR={dbdir}",
            f"--var=RUNDIR={rundir}", f"--var=LOGDIR={self.root}",
        ], (self.rspamd_normal, self.rspamd_proxy), timeout)
        self._wait_hyperscan(timeout)

    def _wait_hyperscan(self, timeout: float) -> None:
        """Until the scanners run on the compiled hyperscan database, as a long-running rspamd does (a fresh
        DBDIR compiles it after start, taking CPU and scanning slower meanwhile); at most `timeout` s."""
        log, deadline = self.root / "rspamd.log", time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "(normal)" in text and "hyperscan database of" in text.partition("hyperscan_ready")[2]:
                return
            if self.helpers["rspamd"].poll() is not None:
                raise BenchError(f"rspamd exited: {text[-1500:]}")
            time.sleep(0.2)

    def _start_opendkim(self, timeout: float) -> None:
        shutil.chown(self.keys.dkim.path, user="opendkim", group="opendkim")
        # OpenDKIM refuses a config file under a world-writable directory (/tmp): this one lives in /run.
        self.opendkim_dir = Path(tempfile.mkdtemp(prefix="fwdmail-bench-opendkim-", dir="/run"))
        self.opendkim_dir.chmod(0o755)
        conf = self.opendkim_dir / "opendkim.conf"
        settings = {
            "Syslog": "no", "Mode": "s", "Domain": self.domain, "Selector": DKIM_SELECTOR,
            "KeyFile": self.keys.dkim.path, "Socket": f"inet:{self.opendkim_port}@{LOOPBACK}",
            "UserID": "opendkim:opendkim", "Canonicalization": "relaxed/simple",
            "SignatureAlgorithm": "rsa-sha256", "InternalHosts": "127.0.0.0/8", "OversignHeaders": "From",
            "RequireSafeKeys": "no",  # the key is the opendkim user's, mode 600, but under /tmp
            "PidFile": self.opendkim_dir / "opendkim.pid",
        }
        conf.write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
        self._spawn("opendkim", [OPENDKIM, "-f", "-x", str(conf)], (self.opendkim_port,), timeout)

    def _write_sasldb(self) -> None:
        """`saslpasswd2` into a private sasldb2 that Postfix's smtpd (user postfix) reads via auxprop."""
        self.sasl_dir.mkdir(parents=True, exist_ok=True)
        self.etc.chmod(0o755)
        self.sasl_dir.chmod(0o755)
        db = self.sasl_dir / "sasldb2"
        local, _, realm = self.alias.partition("@")
        done = subprocess.run([SASLPASSWD2, "-f", str(db), "-p", "-c", "-u", realm, local],
                              input=self.password.encode(), capture_output=True, timeout=30)
        if done.returncode != 0:
            raise BenchError(f"saslpasswd2 failed: {done.stderr.decode(errors='replace')}")
        shutil.chown(db, user="postfix", group="postfix")
        db.chmod(0o600)
        (self.sasl_dir / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {db}\n")

    # ------------------------------------------------------------------ Postfix config
    def _virtual(self) -> str:
        extra = "".join(f"{a} {d}\n" for a, d in self.extra_aliases.items())
        return super()._virtual() + extra

    def _transport(self) -> str:
        routes = "".join(f"{d} smtp:[{LOOPBACK}]:{p}\n" for d, p in self.routes.items())
        return routes + super()._transport()

    def _settings(self, cert: Path, key: Path) -> dict[str, object]:
        settings = super()._settings(cert, key)
        settings.update({
            "myhostname": "stack.bench.test",
            "sender_canonical_maps": f"tcp:{LOOPBACK}:{self.srs_forward}",
            "sender_canonical_classes": "envelope_sender",
            "recipient_canonical_maps": f"tcp:{LOOPBACK}:{self.srs_reverse}",
            "recipient_canonical_classes": "envelope_recipient, header_recipient",
            "milter_protocol": "6",
            "milter_default_action": "tempfail",
            "milter_mail_macros": "i {mail_addr} {client_addr} {client_name} {auth_authen}",
            "cyrus_sasl_config_path": self.sasl_dir,
            "smtpd_sasl_path": "smtpd",
            "smtpd_sasl_type": "cyrus",
        })
        return settings

    def _master_cf(self) -> str:
        mx = (f"{LOOPBACK}:{self.mx_port} inet n - n - {MAX_SMTPD} smtpd\n"
              f"  -o smtpd_milters=inet:{LOOPBACK}:{self.rspamd_proxy}\n")
        submission = (
            f"{LOOPBACK}:{self.submission_port} inet n - n - {MAX_SMTPD} smtpd\n"
            "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_sasl_auth_enable=yes\n"
            "  -o smtpd_tls_auth_only=yes\n  -o smtpd_sasl_security_options=noanonymous\n"
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
            "  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject\n"
            f"  -o smtpd_milters=inet:{LOOPBACK}:{self.opendkim_port}\n"
        )
        return mx + submission + SERVICES
