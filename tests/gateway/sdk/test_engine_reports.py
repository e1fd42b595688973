"""What the engine reports and does behind the SDK: its Prometheus metrics, a client that
leaves (streamed or not) aborting its generation, and a speculative request reporting its
accepted and rejected guesses."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

from tests.gateway.sdk.prompts import CAPITAL, NO_CACHE, STORY
from tests.serving import MODEL_ID


def test_engine_metrics_are_exposed(client: openai.OpenAI, server_url: str) -> None:
    client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=4)
    body = httpx.get(server_url + "/metrics").text
    # vLLM's names, each series labelled with the served model's name, so vLLM's
    # dashboards and autoscaling rules read this engine unchanged.
    label = f'model_name="{MODEL_ID}"'
    lines = body.splitlines()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
        "vllm:request_prefill_time_seconds_count",
        "vllm:request_decode_time_seconds_count",
        "vllm:request_prompt_tokens_bucket",
        "vllm:request_generation_tokens_bucket",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert any(ln.startswith(name + "{") and label in ln for ln in lines), name
    length = f'vllm:request_success_total{{finished_reason="length",model_name="{MODEL_ID}"}}'
    success = [line for line in body.splitlines() if line.startswith(length)]
    assert success and float(success[0].split()[-1]) >= 1


def _metric(server_url: str, prefix: str) -> float:
    lines = [
        ln for ln in httpx.get(server_url + "/metrics").text.splitlines() if ln.startswith(prefix)
    ]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_client_disconnect_aborts_the_generation(server_url: str) -> None:
    aborted = f'vllm:request_success_total{{finished_reason="abort",model_name="{MODEL_ID}"}}'
    before = _metric(server_url, aborted)
    body = {"model": MODEL_ID, "messages": STORY, "stream": True, "max_tokens": 4000,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", server_url + "/v1/chat/completions", json=body) as response:
        data = (ln for ln in response.iter_lines() if ln.startswith("data: "))
        for _ in range(3):
            next(data)
    # The connection is closed mid-answer: the engine must drop the request (4,000 tokens
    # would take minutes) and free its KV blocks. Wait for that event, bounded.
    deadline = time.monotonic() + 15
    while _metric(server_url, aborted) < before + 1:
        assert time.monotonic() < deadline, "the generation was not aborted"
        time.sleep(0.05)
    assert _metric(server_url, "vllm:num_requests_running") == 0
    assert _metric(server_url, "vllm:kv_cache_usage_perc") == 0


def test_a_client_leaving_a_non_streamed_request_aborts_it(server_url: str) -> None:
    """Nothing is being written to this client yet: the gateway still notices it left."""
    aborted = f'vllm:request_success_total{{finished_reason="abort",model_name="{MODEL_ID}"}}'
    before = _metric(server_url, aborted)
    request = {"model": MODEL_ID, "messages": STORY, "max_tokens": 4000, "temperature": 0}
    body = json.dumps({**request, "ignore_eos": True}).encode()
    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "cache-control: no-store\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 15
        while _metric(server_url, "vllm:num_requests_running") < 1:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.05)
    # The socket is closed: 4,000 tokens would take minutes; the request must be dropped.
    deadline = time.monotonic() + 15
    while _metric(server_url, aborted) < before + 1:
        assert time.monotonic() < deadline, "the generation was not aborted"
        time.sleep(0.05)
    assert _metric(server_url, "vllm:num_requests_running") == 0


PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at six. He wound the "
    "clockwork, trimmed the wick and polished the great lens until it shone."
)


@pytest.mark.parametrize("stream", [False, True])
def test_speculative_request_reports_its_guesses(
    client: openai.OpenAI, server_url: str, stream: bool
) -> None:
    messages = [{"role": "user", "content": f"Repeat this passage exactly:\n\n{PASSAGE}"}]
    kwargs = {"model": MODEL_ID, "messages": messages, "max_tokens": 40, "temperature": 0}
    plain = client.chat.completions.create(**kwargs)  # the server's default here: off
    assert plain.usage is not None and plain.usage.completion_tokens_details is None
    drafted_before = _metric(server_url, "vllm:spec_decode_num_draft_tokens_total")
    if stream:
        chunks = list(
            client.chat.completions.create(
                **kwargs,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"speculative": True},
                extra_headers=NO_CACHE,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        fast = client.chat.completions.create(
            **kwargs, extra_body={"speculative": True}, extra_headers=NO_CACHE
        )
        text, usage = fast.choices[0].message.content, fast.usage
    assert text == plain.choices[0].message.content  # greedy: same answer either way
    assert usage is not None and usage.completion_tokens_details is not None
    details = usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 10
    drafted = _metric(server_url, "vllm:spec_decode_num_draft_tokens_total")
    assert drafted - drafted_before == (
        details.accepted_prediction_tokens + details.rejected_prediction_tokens
    )
