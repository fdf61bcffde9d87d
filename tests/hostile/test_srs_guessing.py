"""Forging an SRS address by guessing its hash, against the real daemon with its default budgets.

Guessing clients come from several loopback networks (127.0.N.x: a /24 each, as the daemon counts
them). Each network gets `max_invalid_per_client` wrong guesses, then 451 for the rest of its session
and for its SRS recipients; once the daemon has taken `max_invalid_total`, every SRS recipient gets
451, the correctly signed one too, so the answers stop telling right guesses from wrong ones. The
guesses leave no error-log row each. `[srs] hash_length` makes longer hashes while the four-character
addresses already out (ours, or postsrsd's under the same secret) stay valid until they expire.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fwdmail.config import SrsConfig
from fwdmail.mail import srs
from tests.support.daemon import Daemon, merge
from tests.support.hostile import TALLY, register_summary, session
from tests.support.mx import cli_batch, error_rows, message, send
from tests.support.smtp_sink import SmtpSink

SECRET = "guessing-secret"
SRS_DOMAIN = "srs.fwdmail.test"
DEFAULTS = SrsConfig()
SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["alias", "add", "ok@ours.test", "one@dest.test"],
]
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


@pytest.fixture
def guessed(make_daemon: Callable[..., Daemon], sink: SmtpSink) -> Iterator[Callable[..., Daemon]]:
    """Factory of daemons whose routes all lead to `sink`, where anything relayed would show."""

    def factory(overrides: dict[str, Any] | None = None) -> Daemon:
        d = make_daemon(merge({
            "srs": {"secret": SECRET},
            "delivery": {"routes": {"*": sink.address}},
            "abuse": {"max_messages_per_ip_per_minute": 100_000, "max_errors_per_session": 100_000,
                      "max_connections_per_ip": 1_000},
        }, overrides or {}), start=False)
        cli_batch(d, SETUP)
        return d.start(wait_ports=[d.mx_port])

    yield factory


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _target(length: int = 4) -> tuple[str, str]:
    """(the correctly signed bounce address to victim@other.test today, its hash)."""
    address = srs.forward("victim@other.test", SECRET.encode(), SRS_DOMAIN, _now(), length)
    return address, address.split("=")[1]


def _wrong_guess(right: str) -> str:
    while True:
        guess = "".join(secrets.choice(B64) for _ in right)
        if guess.lower() != right.lower():
            return guess


def _guessing_session(d: Daemon, source: str, guesses: int) -> list[int]:
    """One session from `source` trying `guesses` wrong hashes for today's address, pipelined."""
    address, right = _target()
    forged = [address.replace(f"={right}=", f"={_wrong_guess(right)}=", 1) for _ in range(guesses)]
    with session(d.mx_port, source=source) as s:
        assert s.cmd(b"EHLO guesser.test") == 250
        assert s.cmd(b"MAIL FROM:<>") == 250
        s.send(b"".join(f"RCPT TO:<{f}>\r\n".encode() for f in forged))
        codes = [s.reply()[0] for _ in forged]
        assert s.cmd(b"QUIT") == 221
    return codes


def _rcpt(d: Daemon, source: str, rcpt: str) -> int:
    with session(d.mx_port, source=source) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<>") == 250
        return s.cmd(f"RCPT TO:<{rcpt}>".encode())


def test_past_the_budgets_even_the_correct_hash_gets_4xx(guessed: Callable[..., Daemon],
                                                          sink: SmtpSink) -> None:
    d = guessed()
    right_address, _ = _target()
    per_client, total = DEFAULTS.max_invalid_per_client, DEFAULTS.max_invalid_total
    before = len(error_rows(d))

    # One network: its budget of wrong guesses gets 550, then the rest of the session is refused.
    codes = _guessing_session(d, "127.0.1.1", per_client + 5)
    tries, invalid = len(codes), per_client
    assert codes == [550] * per_client + [451] * 5, codes
    with session(d.mx_port, source="127.0.1.1") as s:
        assert s.cmd(b"EHLO guesser.test") == 250
        assert s.cmd(b"MAIL FROM:<>") == 250
        assert s.cmd(f"RCPT TO:<{right_address}>".encode()) == 451, "a new session of the network: deferred"
        assert s.cmd(b"RCPT TO:<ok@ours.test>") == 250, "its mail to hosted aliases still flows"
    # Another network still has its budget: its correctly signed bounce is accepted.
    assert _rcpt(d, "127.0.2.1", right_address) == 250

    # Many networks together use up the daemon's budget; then nobody's SRS recipient is checked.
    network = 3
    while invalid < total:
        codes = _guessing_session(d, f"127.0.{network}.1", min(per_client, total - invalid))
        assert set(codes) == {550}, codes
        tries, invalid = tries + len(codes), invalid + len(codes)
        network += 1
    assert _rcpt(d, "127.0.200.1", right_address) == 451, "the correct hash too, from a fresh network"
    assert send(d, "alice@src.test", ["ok@ours.test"], message("still forwarding"),
                source="127.0.202.1").code == 250

    rows = error_rows(d)[before:]
    assert len(rows) <= 2, f"{len(rows)} error-log rows for {tries} guesses: {rows}"
    assert "victim" not in str(rows) and "other.test" not in str(rows)
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["one@dest.test"]], "nothing reached the victim"
    TALLY.item("13.2 SRS guessing", tries + 3,
               f"550 for {total} guesses, then 451 even for the correct hash; {len(rows)} error-log rows")


def test_the_deferral_ends_with_the_window(guessed: Callable[..., Daemon], sink: SmtpSink) -> None:
    """A tempfail, not a ban: once the window is over, the sender's retry of a real bounce gets through."""
    d = guessed({"srs": {"max_invalid_per_client": 2, "max_invalid_total": 3, "invalid_window": 1.0}})
    right_address, _ = _target()
    assert _guessing_session(d, "127.0.1.1", 2) == [550, 550]
    assert _guessing_session(d, "127.0.2.1", 1) == [550]
    assert _rcpt(d, "127.0.3.1", right_address) == 451
    deadline = time.monotonic() + 30
    while (code := _rcpt(d, "127.0.3.1", right_address)) != 250 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert code == 250
    assert send(d, "", [right_address], message("late bounce"), source="127.0.3.1").code == 250
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["victim@other.test"]]


def test_ipv6_clients_are_counted_per_64() -> None:
    from fwdmail.policy.clients import network

    assert network("2001:db8:1:2:aaaa::1") == network("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert network("2001:db8:1:3::1") != network("2001:db8:1:2::1")
    assert network("::ffff:192.0.2.7") == network("192.0.2.200") == "192.0.2.0/24"


def test_longer_hashes_keep_addresses_already_out_valid(guessed: Callable[..., Daemon],
                                                         sink: SmtpSink) -> None:
    d = guessed({"srs": {"hash_length": 8}})
    old, _ = _target(4)  # made before the change, by us or by postsrsd with the same secret
    new, new_hash = _target(8)
    assert len(new_hash) == 8
    assert (d.data_dir / "srs.hash_length").read_text().split()[:2] == ["8", "4"]
    for bounce in (old, new):
        assert send(d, "", [bounce], message("bounce"), source="127.0.5.1").code == 250, bounce
    sent = send(d, "alice@src.test", ["ok@ours.test"], message("forwarded"), source="127.0.5.1")
    assert sent.code == 250
    got = sink.wait_for(3)
    [forwarded] = [m for m in got if m.rcpt_tos == ["one@dest.test"]]
    assert forwarded.mail_from.startswith("SRS0=") and len(forwarded.mail_from.split("=")[1]) == 8
    bad = old.replace("=other.test=", "=another.test=")
    assert _rcpt(d, "127.0.6.1", bad) == 550


DAY0 = dt.datetime(2026, 3, 1, 12, 0)


def _days(n: int) -> dt.datetime:
    return DAY0 + dt.timedelta(days=n)


def test_previous_length_only_for_addresses_stamped_before_the_change(tmp_path: Any) -> None:
    path = tmp_path / "srs.hash_length"
    lengths = srs.lengths(path, 8, _days(0))
    assert (lengths.current, lengths.previous) == (8, 4)
    assert srs.lengths(path, 8, _days(5)) == lengths, "the day of the change is kept"
    key = SECRET.encode()

    def local(length: int, made: int) -> str:
        return srs.forward("a@src.test", key, SRS_DOMAIN, _days(made), length).partition("@")[0]

    assert srs.reverse(local(4, 0), key, _days(3), 21, lengths) == "a@src.test"
    assert srs.reverse(local(4, -10), key, _days(3), 21, lengths) == "a@src.test"
    with pytest.raises(srs.SrsError, match="hash"):
        srs.reverse(local(4, 1), key, _days(3), 21, lengths)  # made after the change: no short hash
    with pytest.raises(srs.SrsError, match="expired"):
        srs.reverse(local(4, 0), key, _days(22), 21, lengths)
    assert srs.reverse(local(8, 1), key, _days(3), 21, lengths) == "a@src.test"
    srs1 = srs.forward("SRS0=abcd=AA=x.test=y@first.test", key, SRS_DOMAIN, _days(0), 4).partition("@")[0]
    assert srs.reverse(srs1, key, _days(21), 21, lengths) == "SRS0=abcd=AA=x.test=y@first.test"
    with pytest.raises(srs.SrsError, match="hash"):
        srs.reverse(srs1, key, _days(22), 21, lengths)
    with pytest.raises(srs.SrsError, match="hash"):
        srs.reverse(local(6, 0), key, _days(3), 21, lengths)


def test_a_postsrsd_vector_stays_valid_after_the_change() -> None:
    """The hand-checked four-character vector of test_srs.py (what postsrsd writes with this secret),
    made on the day hash_length became 8, is still reversed three days later."""
    change = srs.Lengths(8, 4, since_day=19737)  # 2024-01-15
    later = dt.datetime(2024, 1, 18)
    for local in ("SRS0=8Nqu=IZ=example.com=alice", "srs0=8nqu=iz=example.com=alice"):
        assert srs.reverse(local, b"tops3cret", later, 21, change) == "alice@example.com"


@pytest.mark.parametrize(("key", "value"), [("hash_length", 3), ("hash_length", 27), ("max_invalid_total", 0),
                                            ("max_invalid_per_client", -1), ("invalid_window", 0)])
def test_bad_budget_values_are_one_line_errors(key: str, value: int) -> None:
    from fwdmail.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match=f"srs.{key}"):
        from_dict({"srs": {key: value}})
