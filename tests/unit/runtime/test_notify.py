"""`runtime.notify` in-process: a path and an abstract name each get the datagram; anything else in
`NOTIFY_SOCKET`, or a socket that is gone, loses the note without raising; one field stays one line."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from fwdmail.runtime.notify import Notifier


def test_fields_reach_an_abstract_socket_one_line_each() -> None:
    name = f"fwdmail-unit-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier("@" + name)
        assert notifier.ready("serving: mx\nREADY=0")
        notifier.close()
        sock.settimeout(5)
        assert sock.recv(4096).decode().splitlines() == ["READY=1", "STATUS=serving: mx READY=0"]


@pytest.mark.parametrize("value", ["", "relative/notify.sock", "vsock:2:1234", "@"])
def test_no_usable_socket_name_means_no_notes(value: str) -> None:
    notifier = Notifier(value)
    assert not notifier.enabled
    assert notifier.ready("serving") is False


def test_a_gone_socket_loses_the_note_without_raising(tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    path.unlink()
    notifier = Notifier(str(path))
    assert notifier.enabled
    assert notifier.stopping("stopping") is False
    notifier.close()
