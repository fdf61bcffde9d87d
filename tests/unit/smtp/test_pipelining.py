"""RFC 2920 PIPELINING in the delivering client: what goes out in one write (a recording server on
loopback), the same per-recipient results as lock-step (aiosmtpd with and without PIPELINING), Postfix's
`smtp-sink`, STARTTLS and reuse on asyncio and uvloop, and replies a server should not send."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import uvloop

from fwdmail.config import from_dict
from fwdmail.smtp.client import Delivery
from fwdmail.smtp.replies import SmtpError
from tests.conftest import require_tool
from tests.support.daemon import free_port
from tests.support.dns_server import LoopbackDNS
from tests.support.smtp_sink import SmtpSink
from tests.support.tls import server_context

MSG = b"From: a@src.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nhello\r\n.dot line\r\n"
Results = dict[str, SmtpError | None]
RUNNERS: dict[str, Callable[[Awaitable[Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def make(dns_server: LoopbackDNS, route: str, **delivery: Any) -> Delivery:
    return Delivery(from_dict({
        "hostname": "mx.fwdmail.test",
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "delivery": {"connect_timeout": 2, "command_timeout": 3, "data_timeout": 3,
                     "routes": {"*": route}, **delivery},
    }))


async def deliver(d: Delivery, batches: list[list[str]], message: bytes = MSG) -> list[Results]:
    try:
        return [await d.send("s@src.test", rcpts, message) for rcpts in batches]
    finally:
        await d.close()


class Recorder(asyncio.Protocol):
    """A scripted SMTP server that keeps every read of what the client sent, as it was read."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.buffer = b""
        self.in_data = False
        self.accepted = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport
        self.script.reads.append([])
        self.transport.write(b"220 rec.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.script.reads[-1].append(data)
        self.buffer += data
        while self.transport is not None:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                stuffed = b"\r\n" + self.buffer[:end + 2]
                self.script.messages.append(stuffed.replace(b"\r\n.", b"\r\n")[2:])
                self.buffer, self.in_data = self.buffer[end + 5:], False
                self.transport.write(b"250 2.0.0 queued\r\n")
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            self.transport.write(self.answer(line.decode()))

    def answer(self, line: str) -> bytes:
        verb = line[:4].upper()
        if verb in self.script.raw:
            return self.script.raw[verb]
        if verb == "EHLO":
            return b"250-rec.test\r\n" + (b"250-PIPELINING\r\n" if self.script.pipelining else b"") + \
                b"250 8BITMIME\r\n"
        if verb == "MAIL":
            self.accepted = 0
            return b"250 2.1.0 OK\r\n"
        if verb == "RCPT":
            reply = self.script.rcpt.get(line.partition("<")[2].rstrip(">"), "250 2.1.5 OK")
            self.accepted += reply.startswith("2")
            return reply.encode() + b"\r\n"
        if verb == "DATA":
            self.in_data = self.accepted > 0
            return b"354 go ahead\r\n" if self.in_data else b"554 5.5.1 No valid recipients\r\n"
        if verb == "QUIT" and self.transport is not None:
            self.transport.write(b"221 2.0.0 bye\r\n")
            self.transport.close()
            return b""
        return b"250 2.0.0 OK\r\n" if verb in ("RSET", "NOOP") else b"500 5.5.2 what\r\n"


class Script:
    """What a `Recorder` answers, and what it read: per connection, each read's bytes."""

    def __init__(self, pipelining: bool = True, rcpt: dict[str, str] | None = None,
                 raw: dict[str, bytes] | None = None) -> None:
        self.pipelining = pipelining
        self.rcpt = rcpt or {}
        self.raw = raw or {}
        self.reads: list[list[bytes]] = []
        self.messages: list[bytes] = []

    def sent(self) -> bytes:
        return b"".join(b"".join(conn) for conn in self.reads)


def record(dns_server: LoopbackDNS, script: Script, batches: list[list[str]], runner: str = "asyncio",
           **delivery: Any) -> list[Results]:
    async def go() -> list[Results]:
        server = await asyncio.get_running_loop().create_server(lambda: Recorder(script), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await deliver(make(dns_server, f"127.0.0.1:{port}", **delivery), batches)
        finally:
            server.close()
    return RUNNERS[runner](go())


RCPTS = ["a@dest.test", "b@dest.test", "c@dest.test"]
GROUP = b"MAIL FROM:<s@src.test>\r\nRCPT TO:<a@dest.test>\r\nRCPT TO:<b@dest.test>\r\n" \
    b"RCPT TO:<c@dest.test>\r\nDATA\r\n"


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_mail_every_rcpt_and_data_go_in_one_write(dns_server: LoopbackDNS, runner: str) -> None:
    script = Script()
    assert record(dns_server, script, [RCPTS], runner) == [dict.fromkeys(RCPTS)]
    assert GROUP in script.reads[0], script.reads
    assert script.messages == [MSG]


def test_without_pipelining_each_command_waits_for_its_reply(dns_server: LoopbackDNS) -> None:
    script = Script(pipelining=False)
    assert record(dns_server, script, [RCPTS]) == [dict.fromkeys(RCPTS)]
    reads = script.reads[0]
    assert b"MAIL FROM:<s@src.test>\r\n" in reads and b"DATA\r\n" in reads
    assert all(read.count(b"\r\n") == 1 for read in reads if not read.startswith(b"From:"))
    assert script.messages == [MSG]


MIXED = {"gone@dest.test": "550 5.1.1 No such user", "busy@dest.test": "451 4.2.1 Busy"}
MIXED_RCPTS = ["gone@dest.test", "busy@dest.test", "ok@dest.test"]
MIXED_RESULT = {"gone@dest.test": SmtpError(550, "5.1.1", "No such user"),
                "busy@dest.test": SmtpError(451, "4.2.1", "Busy"), "ok@dest.test": None}


@pytest.mark.parametrize("pipelining", [True, False])
def test_mixed_recipients_on_aiosmtpd(dns_server: LoopbackDNS, sink: SmtpSink, pipelining: bool) -> None:
    sink.behaviour.pipelining = pipelining
    sink.behaviour.rcpt = dict(MIXED)
    (res,) = RUNNERS["asyncio"](deliver(make(dns_server, sink.address), [MIXED_RCPTS]))
    assert res == MIXED_RESULT
    (got,) = sink.wait_for(1)
    assert got.rcpt_tos == ["ok@dest.test"]
    assert got.data == MSG


@pytest.mark.parametrize("pipelining", [True, False])
def test_mixed_recipients_on_the_recorder(dns_server: LoopbackDNS, pipelining: bool) -> None:
    script = Script(pipelining=pipelining, rcpt=dict(MIXED))
    assert record(dns_server, script, [MIXED_RCPTS]) == [MIXED_RESULT]
    assert script.messages == [MSG]


@pytest.mark.parametrize("pipelining", [True, False])
def test_all_refused_ends_the_transaction_and_the_connection_serves_on(dns_server: LoopbackDNS,
                                                                      pipelining: bool) -> None:
    script = Script(pipelining=pipelining, rcpt={r: "550 5.1.1 No such user" for r in RCPTS})
    first, second = record(dns_server, script, [RCPTS, ["ok@dest.test"]])
    assert first == dict.fromkeys(RCPTS, SmtpError(550, "5.1.1", "No such user"))
    assert second == {"ok@dest.test": None}
    assert len(script.reads) == 1 and script.messages == [MSG]
    if pipelining:
        then = b"RSET\r\nMAIL FROM:<s@src.test>\r\nRCPT TO:<ok@dest.test>\r\nDATA\r\n"
        assert GROUP + then in script.sent()


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("reply", ["550 5.7.1 Sender refused", "451 4.3.0 Try later"])
def test_a_refused_mail_fails_every_recipient(dns_server: LoopbackDNS, sink: SmtpSink, pipelining: bool,
                                              reply: str) -> None:
    sink.behaviour.pipelining = pipelining
    sink.behaviour.mail = reply
    (res,) = RUNNERS["asyncio"](deliver(make(dns_server, sink.address), [RCPTS]))
    assert res == dict.fromkeys(RCPTS, SmtpError.parse(reply))
    assert sink.messages == []


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("where", ["data_command", "data"])
def test_a_refused_data_fails_the_accepted(dns_server: LoopbackDNS, sink: SmtpSink, pipelining: bool,
                                           where: str) -> None:
    sink.behaviour.pipelining = pipelining
    sink.behaviour.rcpt = {"gone@dest.test": "550 5.1.1 No such user"}
    setattr(sink.behaviour, where, "554 5.7.1 Rejected as spam")
    (res,) = RUNNERS["asyncio"](deliver(make(dns_server, sink.address), [["gone@dest.test", "ok@dest.test"]]))
    assert res == {"gone@dest.test": SmtpError(550, "5.1.1", "No such user"),
                   "ok@dest.test": SmtpError(554, "5.7.1", "Rejected as spam")}
    assert sink.messages == []


@pytest.fixture
def tls_sink() -> Iterator[SmtpSink]:
    with SmtpSink(tls_context=server_context(("localhost", "127.0.0.1", "mx1.tls.test"))) as s:
        yield s


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_pipelined_over_starttls_with_reuse(dns_server: LoopbackDNS, tls_sink: SmtpSink, runner: str) -> None:
    """The transaction takes the TLS session from aiosmtplib and gives it back for the next one."""
    tls_sink.behaviour.pipelining = True
    batches = [[f"r{i}@dest.test", f"s{i}@dest.test"] for i in range(3)]
    results = RUNNERS[runner](deliver(make(dns_server, tls_sink.address), batches))
    assert results == [dict.fromkeys(b) for b in batches]
    got = tls_sink.wait_for(3)
    assert [m.rcpt_tos for m in got] == batches and all(m.tls and m.data == MSG for m in got)
    assert tls_sink.connections == 1


def test_a_large_message_with_8bit_and_size(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    sink.behaviour.pipelining = True
    body = b"".join(b"." * (i % 3) + b"b\xc3\xa9" * (i * 7919 % 300) + b"\r\n" for i in range(3000))
    message = b"Subject: big\r\n\r\n" + body
    (res,) = RUNNERS["asyncio"](deliver(make(dns_server, sink.address), [["a@dest.test"]], message))
    assert res == {"a@dest.test": None}
    (got,) = sink.wait_for(1)
    assert got.data == message
    assert sorted(got.mail_options) == ["BODY=8BITMIME", f"SIZE={len(message)}"]


BAD_REPLIES = {
    "line without end": b"250 " + b"x" * 5000,
    "line too long": b"250 " + b"x" * 5000 + b"\r\n",
    "not a reply": b"hello there\r\n",
    "codes that change": b"250-one\r\n550 two\r\n",
    "too many lines": b"250-x\r\n" * 200 + b"250 x\r\n",
    "a reply more than asked": b"250 2.1.0 OK\r\n250 2.1.0 again\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REPLIES))
def test_a_server_breaking_the_protocol_is_a_temporary_failure(dns_server: LoopbackDNS, name: str) -> None:
    script = Script(raw={"MAIL": BAD_REPLIES[name]})
    (res,) = record(dns_server, script, [["a@dest.test"]])
    error = res["a@dest.test"]
    assert error is not None and error.temporary
    assert script.messages == []


def test_a_server_that_never_answers_times_out(dns_server: LoopbackDNS) -> None:
    script = Script(raw={"RCPT": b""})
    (res,) = record(dns_server, script, [["a@dest.test"]], command_timeout=1)
    assert res == {"a@dest.test": SmtpError(451, "4.4.2", "Destination mail server timed out")}


class PostfixSink:
    """Postfix's `smtp-sink` (it offers PIPELINING) dumping each transaction to a file."""

    def __init__(self) -> None:
        self.dump_dir = Path(tempfile.mkdtemp(prefix="fwdmail-pipelining-"))
        self.dump_dir.chmod(0o777)  # smtp-sink writes as `nobody`
        self.port = free_port()
        self.proc = subprocess.Popen(
            [require_tool("smtp-sink"), "-u", "nobody", "-d", f"{self.dump_dir}/%H%M%S.",
             f"127.0.0.1:{self.port}", "20"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def dumps(self, n: int) -> list[str]:
        deadline = time.monotonic() + 20
        while len(files := sorted(self.dump_dir.iterdir())) < n:
            assert time.monotonic() < deadline, f"smtp-sink has {len(files)} message(s), expected {n}"
            time.sleep(0.05)
        time.sleep(0.1)
        return [f.read_text(errors="replace") for f in files]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dump_dir, ignore_errors=True)


@pytest.fixture
def postfix_sink() -> Iterator[PostfixSink]:
    sink = PostfixSink()
    yield sink
    sink.stop()


def test_postfix_smtp_sink_takes_pipelined_transactions(dns_server: LoopbackDNS,
                                                        postfix_sink: PostfixSink) -> None:
    async def go() -> list[Results]:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", postfix_sink.port)
                writer.close()
                break
            except OSError:
                assert time.monotonic() < deadline, "smtp-sink did not start"
                await asyncio.sleep(0.05)
        return await deliver(make(dns_server, f"127.0.0.1:{postfix_sink.port}"), [RCPTS, ["z@dest.test"]])

    assert asyncio.run(go()) == [dict.fromkeys(RCPTS), {"z@dest.test": None}]
    first, second = sorted(postfix_sink.dumps(2), key=lambda dump: "<z@dest.test>" in dump)
    assert all(f"X-Rcpt-Args: <{r}>" in first for r in RCPTS), first
    assert "X-Rcpt-Args: <z@dest.test>" in second
    assert first.replace("\r\n", "\n").endswith(MSG.decode().replace("\r\n", "\n") + "\n")


def test_a_reused_connection_the_server_dropped_is_replaced(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    sink.behaviour.pipelining = True
    d = make(dns_server, sink.address)

    async def go() -> list[Results]:
        first = await d.send("s@src.test", ["a@dest.test"], MSG)
        await asyncio.get_running_loop().run_in_executor(None, sink.stop)
        await asyncio.get_running_loop().run_in_executor(None, sink.start)
        return [first, *await deliver(d, [["b@dest.test"]])]

    assert asyncio.run(go()) == [{"a@dest.test": None}, {"b@dest.test": None}]
    assert [m.rcpt_tos for m in sink.wait_for(2)] == [["a@dest.test"], ["b@dest.test"]]
