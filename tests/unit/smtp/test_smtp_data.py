"""The DATA reader of `SmtpServer` against a line-by-line reading of RFC 5321, over a real socket.

The server reads message data in large pieces; these tests send generated messages cut at random
points (so pieces, lines and the end marker straddle reads) and compare what the handler got with a
plain line-based decoder: the same content, the same refusals (bare CR/LF, size), and the session
still in step afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fwdmail.smtp.data import _unstuffed
from fwdmail.smtp.limits import Sessions
from fwdmail.smtp.server import _PLAIN_PATH, SmtpServer
from tests.support.raw_smtp import RawSmtp

LIMIT = 300
END = b"\r\n.\r\n"


class Recorder:
    """A handler that keeps the content of every accepted message."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []
        self.digests: list[bytes] = []

    async def handle_DATA(self, server: SmtpServer, session: object, envelope: object) -> str:
        self.contents.append(envelope.content)  # type: ignore[attr-defined]
        self.digests.append(envelope.digest)  # type: ignore[attr-defined]
        return "250 2.0.0 kept"


class LoopbackServer:
    """An `SmtpServer` on 127.0.0.1 in a loop of its own thread."""

    def __init__(self, limit: int) -> None:
        self.handler = Recorder()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(limit,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self, limit: int) -> None:
        asyncio.set_event_loop(self.loop)

        self.sessions = Sessions()

        def factory() -> SmtpServer:
            return SmtpServer(self.handler, hostname="data.test", data_size_limit=limit, loop=self.loop,
                              sessions=self.sessions, data_hash=hashlib.sha256)

        self.server = self.loop.run_until_complete(self.loop.create_server(factory, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        self.server.close()
        self.sessions.close("421 4.3.2 stopping")
        await asyncio.sleep(0.1)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer(LIMIT)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def big_server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer(64 * 1024 * 1024)
    yield srv
    srv.stop()


def line_decode(stream: bytes, limit: int) -> bytes | int:
    """What RFC 5321 says the data in `stream` (everything after the 354) is, one line at a time:
    the content, or the refusal's code (552 too big, 550 bare CR/LF)."""
    lines: list[bytes] = []
    pos = size = 0
    bare = False
    while True:
        end = stream.index(b"\r\n", pos)
        line = stream[pos:end]
        pos = end + 2
        if line == b".":
            break
        size += len(line) + 2
        bare = bare or b"\r" in line or b"\n" in line
        lines.append(line[1:] if line[:1] == b"." else line)
    if size > limit:
        return 552
    if bare:
        return 550
    return b"".join(line + b"\r\n" for line in lines)


def send_message(port: int, stream: bytes, cuts: list[int]) -> tuple[int, RawSmtp]:
    """Open a session, send `stream` after DATA cut at `cuts`, and return the reply to it."""
    client = RawSmtp(port, timeout=10)
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert client.cmd(b"EHLO c.test\r\n")[0] == 250
    assert client.cmd(b"MAIL FROM:<a@c.test>\r\n")[0] == 250
    assert client.cmd(b"RCPT TO:<b@d.test>\r\n")[0] == 250
    assert client.cmd(b"DATA\r\n")[0] == 354
    start = 0
    for cut in sorted(set(cuts)):
        if 0 < cut < len(stream):
            client.sock.sendall(stream[start:cut])
            time.sleep(0.001)
            start = cut
    client.sock.sendall(stream[start:])
    return client.reply()[0], client


body_bytes = st.lists(
    st.sampled_from([b".", b"..", b"\r\n", b"\r", b"\n", b"a", b"bc", b".\r\n", b"\r\n.", b"x" * 40]),
    max_size=30,
).map(b"".join)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=body_bytes, cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=4))
def test_pieces_read_as_lines_would_be(server: LoopbackServer, body: bytes, cuts: list[int]) -> None:
    stream = body + (b"" if body.endswith(b"\r\n") or not body else b"\r\n") + b".\r\n"
    assume((b"\r\n" + stream).find(END) == len(stream) - 3)
    expected = line_decode(stream, LIMIT)
    before = len(server.handler.contents)
    code, client = send_message(server.port, stream, cuts)
    try:
        if isinstance(expected, int):
            assert code == expected
            assert len(server.handler.contents) == before
        else:
            assert code == 250
            assert server.handler.contents[-1] == expected
            assert server.handler.digests[-1] == hashlib.sha256(expected).digest()
        assert client.cmd(b"NOOP\r\n")[0] == 250  # what follows the end marker is a command again
    finally:
        client.close()


@pytest.mark.parametrize(("stream", "content"), [
    (b".\r\n", b""),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"...\r\n..\r\n.\r\n", b"..\r\n.\r\n"),
    (b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n"),
    (b"\r\n.\r\n", b"\r\n"),
])
def test_dot_lines_at_the_start_and_inside(server: LoopbackServer, stream: bytes, content: bytes) -> None:
    for cuts in ([], list(range(1, len(stream)))):
        code, client = send_message(server.port, stream, cuts)
        client.close()
        assert code == 250
        assert server.handler.contents[-1] == content


@pytest.mark.parametrize("end", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n", b"\r\n.\r"])
def test_near_end_markers_do_not_end_the_data(server: LoopbackServer, end: bytes) -> None:
    stream = b"Subject: t\r\n\r\nbody" + end + b"NOOP\r\n.\r\n"
    code, client = send_message(server.port, stream, [])
    try:
        assert code == 550  # one message, refused whole for its bare CR/LF, not a 250 then a NOOP
        assert client.cmd(b"NOOP\r\n")[0] == 250
    finally:
        client.close()


def test_a_large_message_with_long_lines_arrives_intact(big_server: LoopbackServer) -> None:
    lines = [b"." * (i % 7) + bytes([97 + i % 26]) * (i * 37 % 5000) for i in range(3000)]
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines)
    code, client = send_message(big_server.port, stuffed + b".\r\n", list(range(1, len(stuffed), 65537)))
    try:
        assert code == 250
        assert big_server.handler.contents[-1] == content
        assert client.cmd(b"QUIT\r\n")[0] == 221
    finally:
        client.close()


@settings(max_examples=400, deadline=None)
@given(body=body_bytes, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4))
def test_unstuffing_piece_by_piece_is_unstuffing_the_whole(body: bytes, cuts: list[int]) -> None:
    """However the data is cut into pieces (a CRLF or a CRLF "." may be split), each piece unstuffed
    with the byte before it gives what the whole unstuffed gives."""
    whole = body[1:] if body[:1] == b"." else body
    whole = whole.replace(b"\r\n.", b"\r\n")
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(body)), len(body)]
    pieces = [body[a:b] for a, b in itertools.pairwise(bounds)]
    out, last = [], b"\r\n"
    for piece in pieces:
        out.append(_unstuffed(piece, last))
        last = (last + piece)[-2:]
    assert b"".join(out) == whole


def test_a_large_message_of_dot_lines_arrives_unstuffed(big_server: LoopbackServer) -> None:
    """Dot lines and CRLFs across the large pieces the body is read in (256 KiB), cut anywhere."""
    lines = [b"." * (i % 3) + b"z" * (i * 7919 % 3000) for i in range(4000)]
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines)
    cuts = [i for i in range(1, len(stuffed)) if stuffed[i - 1:i + 1] in (b"\r\n", b"\n.")][::97]
    code, client = send_message(big_server.port, stuffed + b".\r\n", cuts)
    try:
        assert code == 250
        assert big_server.handler.contents[-1] == content
        assert big_server.handler.digests[-1] == hashlib.sha256(content).digest()  # made while reading
    finally:
        client.close()


def test_an_oversized_message_is_read_to_its_end_and_refused(server: LoopbackServer) -> None:
    stream = b"x" * 100_000 + b"\r\n" + b"y\r\n" * 1000 + b".\r\n"
    code, client = send_message(server.port, stream, [50_000])
    try:
        assert code == 552
        assert client.cmd(b"NOOP\r\n")[0] == 250
    finally:
        client.close()


def test_pipelined_commands_after_the_end_marker_are_commands(server: LoopbackServer) -> None:
    code, client = send_message(server.port, b"Subject: p\r\n\r\nhi\r\n.\r\nNOOP\r\n", [])
    try:
        assert code == 250
        assert client.reply()[0] == 250
        assert server.handler.contents[-1] == b"Subject: p\r\n\r\nhi\r\n"
    finally:
        client.close()


path_parts = st.lists(st.sampled_from(
    ["a", "B", "0", ".", "@", "<", ">", " ", "\t", '"', "-", "+", "=", "(", ")", "[", "]", ":", ",", "\\",
     "é", "x.y", "ex-ample", "SIZE=10", "BODY=8BITMIME"]), max_size=14).map("".join)


@settings(max_examples=500, deadline=None)
@given(arg=st.one_of(path_parts, path_parts.map(lambda s: f"<{s}>"), path_parts.map(lambda s: f"<a@b>{s}"),
                     st.tuples(path_parts, path_parts, path_parts).map(lambda t: f"{t[0]}<{t[1]}@{t[2]}>")))
def test_the_fast_address_path_agrees_with_aiosmtpd(arg: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        server = SmtpServer(Recorder(), hostname="data.test", data_size_limit=0, loop=loop)
        if _PLAIN_PATH.match(arg):
            assert server._getaddr(arg) == SMTP._getaddr(server, arg)
    finally:
        loop.close()


def test_the_fast_address_path_takes_the_common_forms() -> None:
    for arg, expected in [("<a.b+c@ex-ample.test>", ("a.b+c@ex-ample.test", "")),
                          (" <A@B.C> SIZE=10 BODY=8BITMIME", ("A@B.C", "SIZE=10 BODY=8BITMIME"))]:
        assert _PLAIN_PATH.match(arg)
        loop = asyncio.new_event_loop()
        server = SmtpServer(Recorder(), hostname="data.test", data_size_limit=0, loop=loop)
        assert server._getaddr(arg) == expected == SMTP._getaddr(server, arg)
        loop.close()


def test_the_command_tables_are_aiosmtpds() -> None:
    loop = asyncio.new_event_loop()
    try:
        ours = SmtpServer(Recorder(), hostname="data.test", data_size_limit=0, loop=loop)
        plain = SMTP(Recorder(), hostname="data.test", loop=loop)
        assert set(ours._smtp_methods) == set(plain._smtp_methods) >= {"EHLO", "MAIL", "DATA", "STARTTLS"}
        assert set(ours._auth_methods) == set(plain._auth_methods) == {"LOGIN", "PLAIN"}
    finally:
        loop.close()


def test_the_fast_address_path_keeps_trailing_blanks_of_the_parameters_as_aiosmtpd_does() -> None:
    """Found by the property above: `<a@b> a ` gave the parameters "a" here and "a " in aiosmtpd."""
    loop = asyncio.new_event_loop()
    try:
        server = SmtpServer(Recorder(), hostname="data.test", data_size_limit=0, loop=loop)
        for arg in ("<a@b> a ", "<a@b> a\t", "<a@b> a  b ", "<a@b>  "):
            assert _PLAIN_PATH.match(arg)
            assert server._getaddr(arg) == SMTP._getaddr(server, arg)
    finally:
        loop.close()
