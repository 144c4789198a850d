"""Loopback ports for servers a test starts: a free one, and waiting for one to listen."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free on 127.0.0.1 a moment ago (TCP by default, or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int,
    proc: subprocess.Popen[bytes],
    what: str,
    *,
    timeout: float = 30.0,
    log: Path | None = None,
) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection; a RuntimeError if ``proc`` exits
    first (with the end of ``log``, if given) or nothing listens within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} at start\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")
