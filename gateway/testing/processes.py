"""Waiting for a server process to answer: for the local stack (gateway/testing/stack.py)
and the tests that start servers (tests/serving.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


class NotUp(RuntimeError):
    """The process exited, or did not answer in time; the message holds its output."""


def wait_until_up(
    proc: subprocess.Popen[bytes], url: str, seconds: float, what: str, log: Path | None = None
) -> None:
    """Polls GET `url` until it answers 200; NotUp (with the log, or the process's
    stderr when it has no log) if the process exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            output = log.read_text(errors="replace") if log else _stderr(proc)
            raise NotUp(f"{what} exited with {proc.returncode}:\n{output}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise NotUp(f"{what} did not start:\n{log.read_text(errors='replace') if log else ''}")
        time.sleep(0.05)


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    return proc.stderr.read().decode(errors="replace") if proc.stderr else ""
