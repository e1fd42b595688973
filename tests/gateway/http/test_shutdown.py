"""SIGTERM while the engine is generating: the server stops accepting, gives requests in
flight `[server] shutdown_timeout_s`, then aborts them and exits (a real `serve` process
with the real model)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx

from tests.serving import MODEL_ID, TEST_KV_CACHE_GB, start_serve, stop


def _running(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_during_a_generation_exits_within_the_deadline(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    config = (
        "[server]\nshutdown_timeout_s = 1\n"
        f'[engine]\nmodel = "{smollm2_gguf}"\nserved_model_name = "{MODEL_ID}"\n'
        f"kv_cache_gb = {TEST_KV_CACHE_GB}\n"
    )
    proc, url = start_serve(config, tmp_path / "g")
    log = tmp_path / "g.log"
    port = int(url.rsplit(":", 1)[1])
    try:
        body = json.dumps(
            {
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "Tell a story."}],
                "max_tokens": 4000,
                "ignore_eos": True,
                "temperature": 0,
            }
        ).encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            deadline = time.monotonic() + 30
            while _running(url) < 1:
                assert time.monotonic() < deadline, "the generation never started"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            # 4,000 tokens take minutes: exiting at all means the request was given up.
            # (uvicorn re-raises the signal once it has shut down cleanly.)
            assert proc.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"server_shutting_down" in answer
        assert "Traceback" not in log.read_text()
    finally:
        stop(proc, 10)
