"""/metrics under `llm-gateway serve --workers 2`: whichever worker answers a scrape,
it counts every worker's requests (prometheus-client's multiprocess mode over a shared
directory, gateway/worker_metrics.py), the scrape-time collectors included."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway.testing.stack import scrape
from tests.serving import free_port, stop, wait_until_up

Start = Callable[..., str]
REQUESTS = 40


@pytest.fixture
def workers(mock_upstream: Start, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, metrics directory) of a two-worker gateway in front of a mock upstream
    whose group has an admission bound (so the admission collector has something)."""
    upstream = mock_upstream(delay_ms=5)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[groups]]\nname = "g"\nmax_in_flight = 64\nbackends = [{{url = "{upstream}"}}]\n'
        '[[models]]\nname = "m"\ngroups = ["g"]\n'
    )
    directory = tmp_path / "metrics"
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    cmd += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url + "/health", 60, "gateway", log)
        yield url, directory
    finally:
        stop(proc, 10)


def _ask(url: str, i: int) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
    with httpx.Client() as client:  # a connection of its own: any worker may take it
        return client.post(url + "/v1/chat/completions", json=body, timeout=30).status_code


def test_every_scrape_counts_every_workers_requests(workers: tuple[str, Path]) -> None:
    url, directory = workers
    sent = 0
    # Until both workers answered some (each keeps its counters in a file named by its
    # pid); without that, this test could not tell one worker's view from the sum. The
    # health check that let the test start may have been the first worker's while the
    # second was still starting (seen on a loaded machine): then ask again.
    for _ in range(10):
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: _ask(url, i), range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        sent += REQUESTS
        if len(list(directory.glob("counter_*.db"))) == 2:
            break
    assert len(list(directory.glob("counter_*.db"))) == 2
    for _ in range(6):  # fresh connections: the scrapes land on either worker
        metrics = scrape(url, model="m")
        assert metrics["llm_gateway_requests_total"] == sent
        assert metrics["llm_gateway_request_duration_seconds_count"] == sent
        everyone = scrape(url)
        assert everyone["llm_gateway_upstream_outstanding"] == 0
        assert "llm_gateway_admission_in_flight" in everyone  # mirrored from a collector
