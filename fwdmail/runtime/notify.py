"""systemd's readiness protocol (sd_notify) without libsystemd: datagrams to `$NOTIFY_SOCKET`.

`serve` sends READY=1 once every listener accepts, STOPPING=1 when a stop signal arrives, and STATUS=
lines naming services and counts only (never an address). Without `$NOTIFY_SOCKET` (not started by
systemd with `Type=notify`) nothing is sent. A name starting with "@" is an abstract socket.

Untrusted input: the `NOTIFY_SOCKET` environment variable (only a path or an abstract name is used;
anything else is ignored with one warning). Sending never blocks: a full or gone socket loses the note.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["Notifier"]

log = logging.getLogger("fwdmail.notify")


def _address(value: str) -> str | bytes | None:
    """The socket address of `$NOTIFY_SOCKET`, or None if it is not a Unix socket name."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8", "surrogateescape")
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends state changes to the service manager, if one asked for them."""

    def __init__(self, environ_value: str | None = None) -> None:
        """`environ_value`: the socket's name (default: `$NOTIFY_SOCKET`; empty or unset: off)."""
        value = os.environ.get("NOTIFY_SOCKET", "") if environ_value is None else environ_value
        self.address = _address(value) if value else None
        if value and self.address is None:
            log.warning("NOTIFY_SOCKET is not a Unix socket path or abstract name; not notifying systemd")
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send "KEY=value" fields as one datagram; False if it could not be sent (never raises)."""
        if self.address is None:
            return False
        text = "\n".join(f.replace("\n", " ") for f in fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            log.warning("could not notify systemd: %s", exc.strerror or type(exc).__name__)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
