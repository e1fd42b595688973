"""The caches as users run them: `llm-gateway serve --config` with a real Redis store in
front of a real mock upstream process, driven over HTTP (httpx and the OpenAI SDK).
A Redis killed mid-run must cost zero failed requests."""

from __future__ import annotations

import base64
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway.testing.redis_server import RedisProcess
from tests.serving import gateway_config, model_route, upstream_stats

Start = Callable[..., str]


def _cache_config(upstream: str, redis_url: str, extra_plugins: str = "") -> str:
    head = (
        f'plugins = ["exact_cache", {extra_plugins}"routing"]\n'
        f'[store]\nkind = "redis"\nurl = "{redis_url}"\ntimeout_ms = 50\ncooldown_s = 0.2\n'
        "[embeddings]\nenabled = false\n"
    )
    return gateway_config({"g": [upstream]}, model_route(["g"]), head)


def test_a_streamed_answer_is_replayed_from_redis_to_the_openai_sdk(
    mock_upstream: Start, gateway: Callable[[str], str], redis_server: RedisProcess
) -> None:
    up = mock_upstream(chunks=5)
    url = gateway(_cache_config(up, redis_server.url))
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    args: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": f"sdk replay {time.time()}"}],
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    seen = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(**args)
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        usage = chunks[-1].usage
        seen.append((raw.headers["x-cache"], text, finish, usage and usage.total_tokens))
    client.close()
    assert seen[0][0] == "miss" and seen[1][0] == "hit"
    assert seen[0][1:] == seen[1][1:]
    assert seen[1][1] == "tok0 tok1 tok2 tok3 tok4 " and seen[1][2] == "stop"
    assert seen[1][3] is not None  # the usage chunk came back with the replay
    assert upstream_stats(up)["requests"] == 1


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_redis_killed_or_paused_mid_run_fails_no_request(
    mock_upstream: Start, gateway: Callable[[str], str], redis_process: RedisProcess, fault: str
) -> None:
    up = mock_upstream(chunks=3)
    url = gateway(_cache_config(up, redis_process.url))
    failures: list[str] = []
    answered = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        nonlocal answered
        with httpx.Client(base_url=url, timeout=10) as http:
            i = 0
            while not stop.is_set():
                i += 1
                body = {
                    "model": "m",
                    # Half the questions repeat (hits while Redis lives), half are new.
                    "messages": [{"role": "user", "content": f"q{i % 5 if i % 2 else i}-{worker}"}],
                    "temperature": 0,
                    "stream": i % 3 == 0,
                }
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    ok = r.status_code == 200 and (
                        "tok2" in r.text if body["stream"] else r.json()["choices"]
                    )
                    if body["stream"]:
                        ok = ok and r.text.rstrip().endswith("data: [DONE]")
                    if not ok:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                with lock:
                    answered += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()

    def answered_past(count: int) -> None:
        """Until the clients have had `count` answers (bounded), checking every 50 ms."""
        deadline = time.monotonic() + 30
        while answered < count and time.monotonic() < deadline and not failures:
            time.sleep(0.05)

    try:
        answered_past(30)
        before_kill = answered
        # Dead (connections refused) or frozen (SIGSTOP: connections hang, only the
        # store's timeout notices): either way the caches step aside.
        redis_process.kill() if fault == "kill" else redis_process.pause()
        answered_past(before_kill + 10)
        ready = httpx.get(url + "/ready").json()
        answered_past(before_kill + 30)
        during = answered - before_kill
        redis_process.restart() if fault == "kill" else redis_process.resume()
        answered_past(before_kill + 60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert before_kill > 10 and during > 10, (before_kill, during)
    assert ready["status"] == "degraded" and ready["store"]["ok"] is False
    metrics = httpx.get(url + "/metrics").text
    bypassed = [
        line for line in metrics.splitlines() if line.startswith("llm_gateway_store_bypasses_total")
    ]
    assert bypassed and sum(float(line.rsplit(" ", 1)[1]) for line in bypassed) > 0
    deadline = time.monotonic() + 5
    while httpx.get(url + "/ready").json()["status"] != "ready":  # back after the restart
        assert time.monotonic() < deadline, "the store did not come back"
        time.sleep(0.05)


def test_a_bad_cache_control_header_is_ignored(
    mock_upstream: Start, gateway: Callable[[str], str], redis_server: RedisProcess
) -> None:
    url = gateway(_cache_config(mock_upstream(), redis_server.url))
    body = {"model": "m", "messages": [{"role": "user", "content": "cc"}], "temperature": 0}
    r = httpx.post(
        url + "/v1/chat/completions", json=body, headers={"cache-control": "max-age=banana, ,"}
    )
    assert r.status_code == 200 and r.headers["x-cache"] in ("miss", "hit")


def test_tenants_never_share_either_cache_and_embeddings_are_served(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    up = mock_upstream(chunks=3)
    head = (
        'plugins = ["context", "exact_cache", "semantic_cache", "routing"]\n'
        '[[auth.keys]]\nkey = "key-a"\ntenant = "a"\n'
        '[[auth.keys]]\nkey = "key-b"\ntenant = "b"\n'
    )
    url = gateway(gateway_config({"g": [up]}, model_route(["g"]), head))

    def ask(key: str, content: str) -> tuple[str, str]:
        body = {"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0}
        r = httpx.post(
            url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200, r.text
        return r.headers["x-cache"], r.headers.get("x-semantic-cache", "")

    assert ask("key-a", "How do I reset my password?") == ("miss", "miss")
    assert ask("key-a", "How do I reset my password?")[0] == "hit"
    assert ask("key-a", "how can i reset my password") == ("miss", "hit")
    # Tenant b asks the very same questions: neither cache answers from a's entries.
    assert ask("key-b", "How do I reset my password?") == ("miss", "miss")
    assert ask("key-b", "how can i reset my password") == ("miss", "hit")  # b's own entry
    assert upstream_stats(up)["requests"] == 2

    client = openai.OpenAI(base_url=url + "/v1", api_key="key-a", max_retries=0)
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello", "world"])
    packed = client.embeddings.create(
        model="all-MiniLM-L6-v2", input="hello", encoding_format="base64"
    )
    client.close()
    assert [len(d.embedding) for d in floats.data] == [384, 384]
    assert floats.usage.prompt_tokens > 0
    # Asked for base64 explicitly, the SDK hands back the string as sent.
    raw = base64.b64decode(packed.data[0].embedding)  # type: ignore[arg-type]
    unpacked = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert unpacked == pytest.approx(floats.data[0].embedding, abs=1e-5)
    bad = httpx.post(
        url + "/v1/embeddings",
        json={"model": "nope", "input": "x"},
        headers={"authorization": "Bearer key-a"},
    )
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"
    metrics = httpx.get(url + "/metrics").text
    assert "llm_gateway_embedding_batches_total" in metrics
    assert 'llm_gateway_cache_lookups_total{cache="semantic_cache",outcome="hit"} 2.0' in metrics
