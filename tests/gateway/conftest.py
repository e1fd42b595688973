from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

MODEL_ID = "SmolLM2-135M-Instruct"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def server_url(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `llm-gateway serve` process on a loopback port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(smollm2_gguf),
        "--served-model-name",
        MODEL_ID,
        "--log-level",
        "warning",
        # Prompt lookup for requests that ask for it ("speculative": true) only.
        "--speculative",
        "ngram",
        "--speculative-opt-in",
        "--no-adaptive-speculation",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not become healthy:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def mock_upstream() -> Iterator[Callable[..., str]]:
    """Starts real mock OpenAI servers (gateway/testing/mock_upstream.py) in their own
    processes: mock_upstream(chunks=3, status=500, ...) -> base URL ending in /v1."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**flags: object) -> str:
        port = _free_port()
        cmd = [sys.executable, "-m", "gateway.testing.mock_upstream", "--port", str(port)]
        for k, v in flags.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mock upstream exited: {proc.stderr.read() if proc.stderr else ''!r}")
            try:
                httpx.get(url + "/models", timeout=1)
                return url
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("mock upstream did not start")
                time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.stderr is not None:
            proc.stderr.close()
