"""Run a command with its stderr on a pseudo-terminal, as a user's shell would give it, to see
what is drawn there only for a terminal (progress bars)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading
from collections.abc import Sequence


def run_on_a_terminal(args: Sequence[str], timeout: float = 120.0) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal on stderr received) of ``args``; the terminal is
    100 columns by 30 rows."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every copy of the follower side is closed
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=read, name="terminal", daemon=True)
    try:
        with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower) as process:
            os.close(follower)
            follower = -1
            reader.start()
            stdout, _ = process.communicate(timeout=timeout)
        reader.join(timeout=10)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    return process.returncode, stdout.decode(), b"".join(received).decode(errors="replace")
