"""SRS: fixed-date vectors computed by hand from the scheme, round trips, expiry, and interop with the
Debian `srs` tool (Mail::SRS, the Perl reference libsrs2/postsrsd are compatible with)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import subprocess

import pytest

from fwdmail.mail import srs
from tests.conftest import require_tool

SECRET = b"tops3cret"
DOMAIN = "srs.example.org"
DAY = dt.datetime(2024, 1, 15, 12, 0)  # 19737 days after the epoch; 19737 % 1024 = 281 = 8*32 + 25 -> "IZ"


def test_fixed_date_vector_srs0() -> None:
    # By hand: TT = BASE32[8] + BASE32[25] = "IZ";
    # HHHH = base64(HMAC-SHA1("tops3cret", "izexample.comalice"))[:4]
    #      = base64(f0da aed8 61a0 803a 1fc2 db28 7d1e ec31 3067 7cb9)[:4] = "8Nqu"
    assert srs.timestamp(DAY) == "IZ"
    assert srs.forward("alice@example.com", SECRET, DOMAIN, DAY) == (
        "SRS0=8Nqu=IZ=example.com=alice@srs.example.org")


def test_vector_matches_a_direct_hmac() -> None:
    mac = hmac.new(SECRET, b"izexample.comalice", hashlib.sha1).digest()
    assert mac.hex() == "f0daaed861a0803a1fc2db287d1eec3130677cb9"
    assert base64.b64encode(mac).decode()[:4] == "8Nqu"


def test_fixed_date_vector_srs1() -> None:
    # HHHH = base64(HMAC-SHA1("tops3cret", "example.net" + "=8nqu=iz=example.com=alice"))[:4] = "r4Un"
    assert (srs.forward("SRS0=8Nqu=IZ=example.com=alice@example.net", SECRET, DOMAIN, DAY)
            == "SRS1=r4Un=example.net==8Nqu=IZ=example.com=alice@srs.example.org")
    # An SRS1 sender keeps its first forwarder; only the hash is made again with our secret.
    assert (srs.forward("SRS1=abcd=example.net==8Nqu=IZ=example.com=alice@other.test", SECRET, DOMAIN, DAY)
            == "SRS1=r4Un=example.net==8Nqu=IZ=example.com=alice@srs.example.org")


def test_hash_input_is_lowercased_but_case_is_kept_in_the_address() -> None:
    assert srs.forward("Alice@example.com", SECRET, DOMAIN, DAY) == (
        "SRS0=8Nqu=IZ=example.com=Alice@srs.example.org")


def test_only_ascii_is_lowercased_for_the_hash() -> None:
    # libsrs2 lowercases bytes with tolower() in the C locale: "Ü" is hashed as sent, unlike str.lower().
    mac = hmac.new(SECRET, "izexample.comjÜrgen".encode(), hashlib.sha1).digest()
    expected = base64.b64encode(mac).decode()[:4]
    assert srs.forward("JÜRGEN@example.com", SECRET, DOMAIN, DAY) == (
        f"SRS0={expected}=IZ=example.com=JÜRGEN@srs.example.org")


def test_reverse_round_trip_and_case_insensitive_hash() -> None:
    assert srs.reverse("SRS0=8Nqu=IZ=example.com=alice", SECRET, DAY) == "alice@example.com"
    assert srs.reverse("srs0=8nqu=iz=example.com=alice", SECRET, DAY) == "alice@example.com"
    assert srs.reverse("SRS1=r4Un=example.net==8Nqu=IZ=example.com=alice", SECRET, DAY) == (
        "SRS0=8Nqu=IZ=example.com=alice@example.net")


def test_local_parts_with_separators_survive() -> None:
    fwd = srs.forward("a=b+c-d@example.com", SECRET, DOMAIN, DAY)
    local = fwd.rpartition("@")[0]
    assert srs.reverse(local, SECRET, DAY) == "a=b+c-d@example.com"


@pytest.mark.parametrize("age, ok", [(0, True), (21, True), (22, False), (1000, False)])
def test_max_age_21_days(age: int, ok: bool) -> None:
    local = srs.forward("alice@example.com", SECRET, DOMAIN, DAY).rpartition("@")[0]
    later = DAY + dt.timedelta(days=age)
    if ok:
        assert srs.reverse(local, SECRET, later) == "alice@example.com"
    else:
        with pytest.raises(srs.SrsError, match="expired"):
            srs.reverse(local, SECRET, later)


def test_timestamp_wraps_every_1024_days() -> None:
    start = dt.datetime(2024, 1, 15) + dt.timedelta(days=1024 - 281 - 10)  # day % 1024 == 1014
    local = srs.forward("alice@example.com", SECRET, DOMAIN, start).rpartition("@")[0]
    assert srs.reverse(local, SECRET, start + dt.timedelta(days=20)) == "alice@example.com"  # across the wrap
    with pytest.raises(srs.SrsError):
        srs.reverse(local, SECRET, start + dt.timedelta(days=40))


@pytest.mark.parametrize("local", [
    "SRS0=XXXX=IZ=example.com=alice",   # bad hash
    "SRS0=8Nqu=IZ=example.org=alice",   # tampered domain
    "SRS0=8Nqu=IZ=example.com",         # missing field
    "SRS0=8Nqu=I!=example.com=alice",   # bad timestamp
    "SRS1=XXXX=example.net==8Nqu=IZ=example.com=alice",
    "SRS1=r4Un=example.net",
    "alice",
])
def test_invalid_addresses_are_refused(local: str) -> None:
    with pytest.raises(srs.SrsError):
        srs.reverse(local, SECRET, DAY)


def test_null_sender_and_our_own_domain_stay() -> None:
    assert srs.forward("", SECRET, DOMAIN, DAY) == ""
    assert srs.forward("SRS0=8Nqu=IZ=example.com=alice@srs.example.org", SECRET, DOMAIN, DAY) == (
        "SRS0=8Nqu=IZ=example.com=alice@srs.example.org")


def _perl_srs(*args: str) -> str:
    tool = require_tool("srs")
    out = subprocess.run([tool, f"--secret={SECRET.decode()}", *args], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("sender", ["alice@example.com", "SRS0=8Nqu=IZ=example.com=alice@example.net",
                                    "Bob.Smith+tag@Example.com", "JÜRGEN.Ölmann@example.com"])
def test_interop_with_mail_srs_today(sender: str) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    theirs = _perl_srs(f"--alias={DOMAIN}", "--forward", sender)
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    ours = {srs.forward(sender, SECRET, DOMAIN, t) for t in (before, after)}
    assert theirs in ours
    assert srs.reverse(theirs.rpartition("@")[0], SECRET, after) == sender
    assert _perl_srs("--reverse", srs.forward(sender, SECRET, DOMAIN, after)) == sender
