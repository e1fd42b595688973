"""A backend killed under load (SIGKILL, mid-generation, with requests queued on it)
through a gateway in front of two real engine backends, with the official OpenAI client
(its own retries off, so that only the gateway can save a request).

No request that had not started streaming is lost: every non-streamed request is
answered in full, and a stream fails only if the client already had part of it. The
ones the dead backend held unanswered (running without a byte sent, or queued) went to
the other backend: the gateway counted retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from gateway.testing.stack import MODEL, Stack, scrape
from tests.stack.conftest import backend_flags

pytestmark = pytest.mark.slow

# Round robin puts 4 on each backend. The one to be killed runs 2 at a time and queues
# the rest; the other runs 8 at once and admits 16, room for all of them.
REQUESTS = 8


@dataclass
class Outcome:
    stream: bool
    chunks: int = 0  # content chunks the client had received
    finished: bool = False  # a finish_reason arrived
    error: Exception | None = None


@pytest.fixture
def pair(smollm2_gguf: Path, tmp_path: Path) -> Iterator[Stack]:
    flags = backend_flags(smollm2_gguf)
    own = [("--max-num-seqs", "2"), ("--max-num-seqs", "8")]
    with Stack(2, 1, "round_robin", backend_flags=flags, folder=tmp_path,
               per_backend_flags=own) as stack:  # fmt: skip
        yield stack


def _ask(client: openai.OpenAI, i: int, outcome: Outcome) -> None:
    messages = [{"role": "user", "content": f"Request {i}: count from one to forty in words."}]
    try:
        if not outcome.stream:
            answer = client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=48,
                temperature=0,  # type: ignore[arg-type]
            )
            outcome.finished = answer.choices[0].finish_reason is not None
            outcome.chunks = 1 if answer.choices[0].message.content else 0
            return
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=48,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                outcome.chunks += 1
            if chunk.choices and chunk.choices[0].finish_reason is not None:
                outcome.finished = True
    except Exception as exc:  # what the client saw: kept for the assertions
        outcome.error = exc


def _wait_for_queue(url: str, seconds: float = 120.0) -> None:
    """Until the backend runs requests and has more waiting: the moment to kill it."""
    deadline = time.monotonic() + seconds
    while True:
        metrics = scrape(url)
        running = metrics.get("vllm:num_requests_running", 0)
        if running >= 1 and metrics.get("vllm:num_requests_waiting", 0) >= 1:
            return
        assert time.monotonic() < deadline, f"the backend never queued requests: {metrics}"
        time.sleep(0.02)


def test_killing_a_backend_under_load_loses_no_request_that_had_not_started_streaming(
    pair: Stack,
) -> None:
    (gateway,) = pair.gateway_urls
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=300)
    outcomes = [Outcome(stream=i % 4 in (1, 2)) for i in range(REQUESTS)]  # half of each
    threads = [threading.Thread(target=_ask, args=(client, i, o)) for i, o in enumerate(outcomes)]
    for t in threads:
        t.start()
    _wait_for_queue(pair.backend_urls[0])
    pair.kill("backend-1")
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)

    for o in outcomes:
        if o.error is None:
            assert o.finished and o.chunks > 0, o
        else:  # only a stream the client had already begun to read may break
            assert o.stream and o.chunks > 0, o
    cut = sum(o.error is not None for o in outcomes)
    retried = scrape(gateway, outcome="retry").get("llm_gateway_upstream_requests_total", 0)
    answered = REQUESTS - cut
    print(
        f"\n{REQUESTS} requests, backend-1 killed with some queued: {answered} answered in full,"
        f" {cut} streams cut after their first chunks, {retried:.0f} retried"
    )
    assert retried > 0  # the killed backend held requests, and they went on
