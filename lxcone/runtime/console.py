"""Attach a terminal to a container's console through its monitor's unix socket."""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty

DETACH_PREFIX = b"\x01"  # Ctrl-a, then q, as lxc-console and screen do


def attach_console(sock_path: str) -> int:
    """Pump stdin/stdout to the console until Ctrl-a q or the container stops."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock_path)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} [connect console]", sock_path) from None
    interactive = os.isatty(0)
    saved = termios.tcgetattr(0) if interactive else None
    if interactive:
        tty.setraw(0)
        sys.stderr.write("Connected to the console; Ctrl-a q to detach\r\n")
    prefix = False
    try:
        while True:
            r, _, _ = select.select([0, s], [], [])
            if s in r:
                data = s.recv(65536)
                if not data:
                    return 0
                os.write(1, data)
            if 0 in r:
                data = os.read(0, 1024)
                if not data:
                    return 0
                if prefix and data[:1] in (b"q", b"Q"):
                    return 0
                prefix = data.endswith(DETACH_PREFIX)
                s.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        s.close()
