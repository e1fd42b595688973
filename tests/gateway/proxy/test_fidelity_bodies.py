"""The gateway is a lossless proxy for bodies: a real `llm-gateway serve --config` process
in front of the recording mock upstream (tests/gateway/proxy_env.py), over real HTTP.
Request fields arrive upstream as sent (only the model alias rewritten), answers reach
the client as answered, SSE frames unchanged; the exact cache keeps every field.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.gateway.proxy.conftest import ALIAS, control, post, seen, tag

# ---- request fields ---------------------------------------------------------------------------


def _request(model: str, tag: str, temperature: float = 0.7) -> dict[str, Any]:
    """A chat request with known, newer and made-up fields (36 top-level ones)."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    part = {"type": "text", "text": f"Grüße {tag} 🌍", "cache_control": {"type": "ephemeral"}}
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "rules"},
            {"role": "user", "name": "ana", "content": [part]},
            {"role": "assistant", "content": "Hallo.", "reasoning_content": "think…"},
            {"role": "user", "content": "And now?"},
        ],
        "temperature": temperature,
        "top_p": 0.95,
        "n": 1,
        "stop": ["\n\n", "END"],
        "max_completion_tokens": 64,
        "frequency_penalty": 0.1,
        "presence_penalty": -0.25,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 42,
        "user": "user-7",
        "tools": [{"type": "function", "function": {"name": "where", "parameters": schema}}],
        "tool_choice": {"type": "function", "function": {"name": "where"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        "reasoning_effort": "low",
        "metadata": {"team": "a", "ticket": "42"},
        "prediction": {"type": "content", "content": "The city is"},
        "service_tier": "flex",
        "store": False,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
        "web_search_options": {"search_context_size": "low"},
        "verbosity": "low",
        "prompt_cache_key": "pck-1",
        "safety_identifier": "sid-1",
        "guided_json": schema,
        "structured_outputs": {"regex": "[a-z]+"},
        "chat_template_kwargs": {"enable_thinking": False},
        "min_tokens": 2,
        "top_k": 40,
        "repetition_penalty": 1.05,
        "x_future_field": {"nested": [1, 2.5, 1e-7, None, True, "ünï ☃"], "deep": {"x": None}},
    }


def _encode(body: dict[str, Any]) -> bytes:
    """Bytes no JSON encoder would reproduce by chance: spacing, raw UTF-8, a float."""
    text = json.dumps(body, ensure_ascii=False, indent=1)
    return text.replace('"top_p": 0.95', '"top_p":0.950').encode()


@pytest.mark.parametrize("model", ["m", "alias"])
def test_request_fields_arrive_as_sent(url: str, upstream: str, model: str) -> None:
    body = _request(model, tag())
    assert len(body) >= 36
    sent = _encode(body)
    assert post(url, "/v1/chat/completions", sent).status_code == 200
    got = seen(upstream)
    if model == "m":
        assert got["raw"] == sent  # nothing to rewrite: byte for byte
        assert got["last_body"] == body
    else:  # only the model differs
        assert got["last_body"] == {**body, "model": ALIAS}
    assert got["last_path"] == "/v1/chat/completions"
    assert got["last_headers"]["content-type"] == "application/json"


def test_exact_cache_hit_returns_the_answer_with_every_field(
    gateways: dict[str, str], upstream: str
) -> None:
    control(upstream, answer_b64=RICH)
    sent = _encode(_request("m", tag(), temperature=0))
    miss = post(gateways["chained"], "/v1/chat/completions", sent)
    assert miss.headers["x-cache"] == "miss" and miss.content == RICH
    assert seen(upstream)["raw"] == sent
    hit = post(gateways["chained"], "/v1/chat/completions", sent)
    assert hit.headers["x-cache"] == "hit"
    assert hit.content == RICH
    assert seen(upstream)["requests"] == 1


# ---- response fields --------------------------------------------------------------------------


def _answer(**changes: Any) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": "Paris.",
        "reasoning_content": "The capital… of France",
        "refusal": None,
        "annotations": [{"type": "url_citation", "url_citation": {"url": "https://x.example"}}],
        "tool_calls": None,
    }
    logprobs = {"content": [{"token": "Paris", "logprob": -0.01, "top_logprobs": []}]}
    answer = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                     "finish_reason": "stop", "stop_reason": None}],
        "usage": {
            "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_123",
        "x_upstream_extra": {"a": [1.50, None]},
    }  # fmt: skip
    return answer | changes


RICH = json.dumps(_answer(), ensure_ascii=False, indent=2).encode()
ANSWERS = {
    "rich": RICH,
    "no_usage": json.dumps({k: v for k, v in _answer().items() if k != "usage"}).encode(),
    "compact": json.dumps(_answer(), separators=(",", ":")).encode(),
}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_response_fields_reach_the_client_as_answered(url: str, upstream: str, answer: str) -> None:
    control(upstream, answer_b64=ANSWERS[answer])
    body = {"model": "m", "messages": [{"role": "user", "content": tag()}]}
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.content == ANSWERS[answer]


# ---- streams ----------------------------------------------------------------------------------


def _event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return head | {"choices": [choice | extra], "x_chunk": {"k": [1, None, "é"]}}


def _two_lines(data: bytes) -> bytes:
    """A CRLF-framed event whose JSON is split over two `data:` lines (SSE joins them)."""
    cut = data.index(b", ") + 1
    return b"data: " + data[:cut] + b"\r\ndata: " + data[cut:] + b"\r\n\r\n"


USAGE = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7, "x_usage": 0.5}
FRAMES = [
    b"data: " + json.dumps(_event({"role": "assistant", "content": ""})).encode() + b"\n\n",
    b"id: 7\ndata: " + json.dumps(_event({"reasoning_content": "Think "})).encode() + b"\n\n",
    b"data: " + json.dumps(_event({"reasoning_content": "é."}), ensure_ascii=False).encode()
    + b"\r\n\r\n",
    _two_lines(json.dumps(_event({"content": "Hel"})).encode()),
    b"data:" + json.dumps(_event({"content": "lo"}, "stop", stop_reason="END")).encode() + b"\n\n",
    b'data: {"id":"chatcmpl-s","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":' + json.dumps(USAGE).encode() + b"}\n\n",
    b"data: [DONE]\n\n",
]  # fmt: skip
DONE = b"data: [DONE]\n\n"


def _stream(base: str, body: dict[str, Any], **headers: str) -> bytes:
    with httpx.stream(
        "POST", base + "/v1/chat/completions", json=body, headers=headers, timeout=10
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream" and r.headers["x-request-id"]
        return r.read()


@pytest.mark.parametrize(
    "options",
    [None, {"include_usage": False, "continuous_usage_stats": False}, {"include_usage": True}],
    ids=str,
)
def test_stream_frames_reach_the_client_unchanged(
    url: str, upstream: str, options: dict[str, Any] | None
) -> None:
    control(upstream, events_b64=FRAMES)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": tag()}]}
    body |= {"stream": True, "x_extra": [1]}
    if options is not None:
        body["stream_options"] = options
    received = _stream(url, body)
    asked = options is not None and options["include_usage"]
    expected = FRAMES[:-1] if asked else FRAMES[:-2]  # the usage frame only if asked for
    assert received == b"".join(expected) + DONE
    # Upstream, the usage chunk is always asked for; nothing else changes.
    extra = {} if options is None else {k: v for k, v in options.items() if k != "include_usage"}
    wanted = {**body, "stream_options": {**extra, "include_usage": True}}
    assert seen(upstream)["last_body"] == wanted


def test_stream_frames_split_anywhere_reach_the_client_whole(url: str, upstream: str) -> None:
    whole = b"".join(FRAMES)
    control(upstream, events_b64=[whole[i : i + 7] for i in range(0, len(whole), 7)])
    body = {"model": "m", "messages": [{"role": "user", "content": tag()}], "stream": True}
    body["stream_options"] = {"include_usage": True}
    assert _stream(url, body) == b"".join(FRAMES[:-1]) + DONE


def _fields(stream: bytes) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The delta's string fields joined, and every chunk decoded."""
    lines = [line[5:] for line in stream.splitlines() if line.startswith(b"data:")]
    chunks = [json.loads(line) for line in lines if line.strip() != b"[DONE]"]
    text: dict[str, str] = {}
    for c in chunks:
        for choice in c["choices"]:
            for k, v in choice["delta"].items():
                if isinstance(v, str) and k != "role":
                    text[k] = text.get(k, "") + v
    return text, chunks


def test_a_replayed_stream_keeps_unknown_fields(gateways: dict[str, str], upstream: str) -> None:
    control(upstream, events_b64=FRAMES)
    body = {"model": "m", "messages": [{"role": "user", "content": tag()}], "stream": True}
    body |= {"temperature": 0, "stream_options": {"include_usage": True}}
    first = _stream(gateways["chained"], body)
    assert first == b"".join(FRAMES[:-1]) + DONE  # the miss: upstream's frames
    replayed = _stream(gateways["chained"], body)
    assert seen(upstream)["requests"] == 1  # the hit never went upstream
    text, chunks = _fields(replayed)
    assert text == {"content": "Hello", "reasoning_content": "Think é."}
    assert all(c["x_chunk"] == {"k": [1, None, "é"]} for c in chunks)
    finish = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert [(f["finish_reason"], f["stop_reason"]) for f in finish] == [("stop", "END")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE
    assert replayed.endswith(DONE)
    # The same request unstreamed is answered from the same entry, as one message.
    whole = post(
        gateways["chained"], "/v1/chat/completions", json.dumps(body | {"stream": False}).encode()
    )
    assert whole.headers["x-cache"] == "hit"
    answer = whole.json()
    choice = answer["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Hello",
        "reasoning_content": "Think é.",
    }
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "END")
    assert answer["x_chunk"] == {"k": [1, None, "é"]} and answer["usage"] == USAGE


# ---- multipart, binary and other passthrough paths ------------------------------------------

# A file part holding what a careless parser would take for a boundary or another field.
