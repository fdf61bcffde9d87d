"""Key material: DKIM keys that really sign and verify, scrypt password hashes, secrets, the TLS pair."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fwdmail.runtime import keys

MSG = (b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\nDate: Tue, 1 Oct 2024 10:00:00 +0000\r\n"
       b"Message-ID: <1@example.com>\r\n\r\nhello\r\n")


@pytest.fixture(scope="module")
def dkim_pem() -> str:
    return keys.generate_dkim_key()


def test_dkim_key_is_rsa_2048_pkcs1(dkim_pem: str) -> None:
    assert dkim_pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    key = serialization.load_pem_private_key(dkim_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert keys.generate_dkim_key() != dkim_pem


def test_dkim_record_verifies_a_signature_made_with_the_key(dkim_pem: str) -> None:
    record = keys.dkim_public_record(dkim_pem)
    assert record.startswith("v=DKIM1; k=rsa; p=")
    signature = dkim.sign(MSG, b"fwd202401", b"example.com", dkim_pem.encode(),
                          include_headers=[b"from", b"to", b"subject"])

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return record.encode() if name == b"fwd202401._domainkey.example.com." else b""

    assert dkim.verify(signature + MSG, dnsfunc=dns)
    assert not dkim.verify(signature + MSG.replace(b"hello", b"HELLO"), dnsfunc=dns)
    other = keys.dkim_public_record(keys.generate_dkim_key(bits=1024))
    assert not dkim.verify(signature + MSG, dnsfunc=lambda name, timeout=5: other.encode())


def test_selector_and_token() -> None:
    assert keys.new_selector(dt.datetime(2024, 3, 9)) == "fwd202403"
    tokens = {keys.new_token() for _ in range(20)}
    assert len(tokens) == 20 and all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)


def test_password_hash_round_trip_and_salt() -> None:
    password = keys.generate_password()
    assert len(password) >= 24
    first, second = keys.hash_password(password), keys.hash_password(password)
    assert first != second  # salted
    assert password not in first and password.encode() not in base64.b64decode(first.split("$")[-1])
    scheme, n, r, p, salt, digest = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert keys.verify_password(password, first) and keys.verify_password(password, second)
    assert not keys.verify_password(password + "x", first)
    assert not keys.verify_password(password.upper(), first)
    assert not keys.verify_password("", first)


def test_unicode_passwords_hash_as_utf8() -> None:
    hashed = keys.hash_password("pässwörd-ß")
    assert keys.verify_password("pässwörd-ß", hashed)
    assert not keys.verify_password("passwoerd-ss", hashed)
    assert not keys.verify_password("\udcff", hashed)  # unencodable input is a mismatch, not a crash


@pytest.mark.parametrize("stored", [
    None, "", "plain", "scrypt$x", "bcrypt$16384$8$1$AAAA$AAAA", "scrypt$abc$8$1$AAAA$AAAA",
    "scrypt$16384$8$1$!!!$AAAA", "scrypt$16384$8$1$AAAA$", "scrypt$3$8$1$AAAA$AAAA",
    "scrypt$-2$8$1$AAAA$AAAA", f"scrypt${2**80}$8$1$AAAA$AAAA", "scrypt$16384$99999999$1$AAAA$AAAA",
    "scrypt$16384$8$1$AAAA$AAAA$extra",
])
def test_malformed_hashes_never_verify_and_never_raise(stored: str | None) -> None:
    assert keys.verify_password("secret", stored) is False


def test_secret_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "srs.secret"
    secret = keys.ensure_secret(path)
    assert len(base64.b64decode(secret)) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert keys.ensure_secret(path) == secret
    path.write_bytes(b"\n")
    with pytest.raises(keys.DamagedKeyFile, match="empty or cut short"):
        keys.ensure_secret(path)  # never a new secret over one a crash cut short
    assert path.read_bytes() == b"\n"


def test_self_signed_pair(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert keys.ensure_self_signed_cert(cert_path, key_path, "mx.example.com") is True
    for p in (cert_path, key_path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mx.example.com" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)  # the key matches the certificate
    before = cert_path.read_bytes()
    assert keys.ensure_self_signed_cert(cert_path, key_path, "other.example.com") is False
    assert cert_path.read_bytes() == before


def test_generated_passwords_are_letters_and_digits_only() -> None:
    """A password that starts with "-" is taken for an option by command-line clients (swaks did)."""
    passwords = [keys.generate_password() for _ in range(2000)]
    assert all(p.isascii() and p.isalnum() and len(p) == 24 for p in passwords)
    assert len(set(passwords)) == len(passwords)
