"""A plain-socket SMTP client for what smtplib would not do: stop half way through a message, send
smuggling sequences, or speak implicit TLS byte by byte."""

from __future__ import annotations

import contextlib
import socket
import ssl


class RawSmtp:
    """One connection to 127.0.0.1:`port` (TLS from the first byte when `tls` is given)."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, timeout: float = 30) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls.wrap_socket(sock) if tls is not None else sock
        self.file = self.sock.makefile("rb")
        code, text = self.reply()
        assert code == 220, (code, text)

    def reply(self) -> tuple[int, bytes]:
        """The next reply: its code and its lines' texts joined."""
        lines = []
        for _ in range(100):
            line = self.file.readline()
            assert line, "connection closed"
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(x[4:] for x in lines).strip()
        raise AssertionError("endless reply")

    def cmd(self, text: bytes) -> tuple[int, bytes]:
        self.sock.sendall(text)
        return self.reply()

    def close(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            self.sock.close()
