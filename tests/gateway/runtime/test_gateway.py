"""The gateway as users run it: `llm-gateway serve --config ...` in its own process, in
front of real mock upstream processes. Routing, ejection and recovery, fallback, stream
failures, client disconnects, a third-party plugin from examples/, auth, readiness."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.serving import free_port, gateway_config, model_route, upstream_stats

Start = Callable[..., str]


def _chat(url: str, content: str, stream: bool = False, **kw: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10, **kw)


def _unreachable() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def test_routing_spreads_and_prefers_the_prefix_owner(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    ups = [mock_upstream(name=f"u{i}") for i in range(3)]
    url = gateway(gateway_config({"g": ups}, model_route(["g"])))
    for i in range(30):  # different prompts spread
        assert _chat(url, f"{i:06d} a prompt of its own").status_code == 200
    counts = [upstream_stats(u)["requests"] for u in ups]
    assert sum(counts) == 30 and min(counts) > 0
    shared = "You are a helpful assistant for the harbour office. " * 4
    for turn in range(10):  # one conversation growing: its prefix stays on one backend
        assert _chat(url, shared + " question " * turn).status_code == 200
    grew = [upstream_stats(u)["requests"] - c for u, c in zip(ups, counts, strict=True)]
    assert sorted(grew) == [0, 0, 10]


def test_a_failing_backend_is_ejected_then_recovers(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    bad, good = mock_upstream(status=500, name="bad"), mock_upstream(name="good")
    settings = '{name = "routing", settings = {failure_threshold = 3, ejection_base_s = 0.05}}'
    url = gateway(
        gateway_config(
            {"g": [bad, good]}, model_route(["g"], "round_robin"), f"plugins = [{settings}]"
        )
    )
    for i in range(20):  # retried on the good one: clients never see the failures
        assert _chat(url, f"request {i}").status_code == 200
    # Ejected after 3 consecutive failures; then only probes, the back-off doubling after
    # each failed one (round robin alone would have sent it 10 of the 20).
    failed = upstream_stats(bad)["requests"]
    assert 3 <= failed < 10
    httpx.post(bad + "/control", json={"status": 200})
    deadline = time.monotonic() + 10  # the back-off passes; a probe puts it back
    i = 0
    while upstream_stats(bad)["requests"] < failed + 3:
        assert time.monotonic() < deadline, "the recovered backend never came back"
        assert _chat(url, f"after {i}").status_code == 200
        i += 1
        time.sleep(0.01)


def test_fallback_to_the_second_group(mock_upstream: Start, gateway: Callable[[str], str]) -> None:
    backup = mock_upstream(name="backup")
    url = gateway(
        gateway_config(
            {"dead": [_unreachable()], "backup": [backup]}, model_route(["dead", "backup"])
        )
    )
    reply = _chat(url, "hello")
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    assert upstream_stats(backup)["requests"] == 1


def test_4xx_is_not_retried(mock_upstream: Start, gateway: Callable[[str], str]) -> None:
    a, b = mock_upstream(status=400), mock_upstream(status=400)
    url = gateway(gateway_config({"g": [a, b]}, model_route(["g"], "round_robin")))
    reply = _chat(url, "bad request")
    assert reply.status_code == 400 and reply.json()["error"]["message"] == "mock mock failing"
    assert upstream_stats(a)["requests"] + upstream_stats(b)["requests"] == 1


def test_a_stream_dying_mid_answer_ends_with_an_error_event(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    url = gateway(gateway_config({"g": [mock_upstream(chunks=8, die_after=3)]}, model_route(["g"])))
    with httpx.stream("POST", url + "/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
    }, timeout=10) as r:  # fmt: skip
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert len(events) == 4 and "[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == "server_error"


def test_a_client_disconnect_cancels_the_upstream(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    upstream = mock_upstream(chunks=500, delay_ms=10)
    url = gateway(gateway_config({"g": [upstream]}, model_route(["g"])))
    with httpx.stream("POST", url + "/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
    }, timeout=10) as r:  # fmt: skip
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
    deadline = time.monotonic() + 1.5
    while upstream_stats(upstream)["cancelled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_stats(upstream)["cancelled"] == 1


def test_a_third_party_plugin_is_discovered_and_runs_in_order(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    chain = (
        'plugins = [{name = "stamp", settings = {header = "x-outer"}}, "routing", '
        '{name = "stamp", settings = {header = "x-inner"}}]'
    )
    url = gateway(gateway_config({"g": [mock_upstream(delay_ms=20)]}, model_route(["g"]), chain))
    reply = _chat(url, "hello")
    assert reply.status_code == 200
    outer = float(reply.headers["x-outer"].split("below_ms=")[1])
    inner = float(reply.headers["x-inner"].split("below_ms=")[1])
    assert reply.headers["x-outer"].startswith("tenant=default;")
    assert outer >= inner >= 20.0  # the outer one wraps the inner one, which wraps the upstream
    assert float(reply.headers["x-gateway-overhead-ms"]) >= 0.0


def test_api_keys_map_to_tenants(mock_upstream: Start, gateway: Callable[[str], str]) -> None:
    auth = '[[auth.keys]]\nkey = "sk-a"\ntenant = "team-a"\n'
    chain = 'plugins = ["routing", "stamp"]\n'
    url = gateway(gateway_config({"g": [mock_upstream()]}, model_route(["g"]), chain + auth))
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        reply = _chat(url, "hi", headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/v1/models").status_code == 401
    reply = _chat(url, "hi", headers={"Authorization": "Bearer sk-a"})
    assert reply.status_code == 200 and reply.headers["x-stamp"].startswith("tenant=team-a;")


def test_readiness_is_separate_from_liveness(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    models = model_route(["up"], name="m") + model_route(["down"], name="n")
    url = gateway(gateway_config({"up": [mock_upstream()], "down": [_unreachable()]}, models))
    assert httpx.get(url + "/health").status_code == 200
    ready = httpx.get(url + "/ready")  # ready: model m can be served
    assert ready.status_code == 200
    assert ready.json()["models"] == {"m": True, "n": False}
    body = {"model": "n", "messages": [{"role": "user", "content": "hi"}]}
    unserved = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
    assert unserved.status_code in (502, 503)  # the model without a backend answers itself


def test_metrics_count_requests_plugins_and_backends(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    up = mock_upstream(chunks=3)
    url = gateway(gateway_config({"g": [up]}, model_route(["g"])))
    assert _chat(url, "one").status_code == 200
    with httpx.stream("POST", url + "/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "two"}], "stream": True,
    }, timeout=10) as r:  # fmt: skip
        list(r.iter_lines())
    text = httpx.get(url + "/metrics").text
    labels = 'endpoint="chat.completions",model="m",status="200",tenant="default"'
    assert f"llm_gateway_requests_total{{{labels}}} 2.0" in text
    assert (
        'llm_gateway_plugin_outcomes_total{hook="handle",outcome="ok",plugin="routing"} 2.0' in text
    )
    assert f'llm_gateway_upstream_up{{backend="{up}"}} 1.0' in text
    assert 'llm_gateway_tokens_total{kind="completion",model="m",tenant="default"} 6.0' in text
    assert "llm_gateway_time_to_first_token_seconds_count" in text
    assert f'llm_gateway_upstream_requests_total{{backend="{up}",outcome="ok"}} 2.0' in text


def test_an_admin_key_guards_metrics_and_readiness_detail(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    up = mock_upstream()
    url = gateway(gateway_config({"g": [up]}, model_route(["g"]), '[server]\nadmin_key = "adm"\n'))
    assert httpx.get(url + "/metrics").status_code == 401
    admin = {"authorization": "Bearer adm"}
    assert "llm_gateway_requests" in httpx.get(url + "/metrics", headers=admin).text
    anonymous = httpx.get(url + "/ready")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    detail = httpx.get(url + "/ready", headers=admin).json()
    assert detail["backends"] == {up: True}  # names and URLs for the operator only
    assert httpx.get(url + "/health").status_code == 200
