"""A backend that dies under a request: `llm-gateway serve` in its own process in front of
two mock upstream processes. A request whose backend dropped the connection before
answering anything (no status line; for a stream, no event) goes to the other backend,
and the client never knows; one whose answer had started, or that timed out (the
backend may still be working on it), is not sent again."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from tests.serving import gateway_config, model_route, upstream_stats

Start = Callable[..., str]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _post(url: str, **fields: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={**BODY, **fields}, timeout=10)


def _events(url: str) -> tuple[int, list[str]]:
    with httpx.stream("POST", url + "/v1/chat/completions", json={**BODY, "stream": True},
                      timeout=10) as r:  # fmt: skip
        return r.status_code, [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def _dropping(mock_upstream: Start, name: str) -> str:
    """A mock upstream that reads each request, then closes the connection unanswered."""
    url = mock_upstream(name=name)
    httpx.post(url + "/control", json={"drop": True}).raise_for_status()
    return url


def _requests(*upstreams: str) -> list[int]:
    return [upstream_stats(u)["requests"] for u in upstreams]


def test_a_request_its_backend_dropped_unanswered_is_answered_by_another(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    dead, alive = _dropping(mock_upstream, "dead"), mock_upstream(name="alive")
    url = gateway(gateway_config({"g": [dead, alive]}, model_route(["g"], "round_robin")))
    for i in range(4):
        reply = _post(url, user=f"u{i}")
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
    tried_dead, answered = _requests(dead, alive)
    assert tried_dead >= 1 and answered == 4  # each once: the dropped ones went on


def test_a_stream_whose_backend_dies_before_its_first_event_is_answered_by_another(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    dead = mock_upstream(die_after=0, name="dead")  # the head, then gone: no event
    alive = mock_upstream(name="alive")
    url = gateway(gateway_config({"g": [dead, alive]}, model_route(["g"], "round_robin")))
    for _ in range(2):
        status, events = _events(url)
        assert status == 200 and events[-1] == "[DONE]"
        assert not any("error" in json.loads(e) for e in events[:-1])
    tried_dead, answered = _requests(dead, alive)
    assert tried_dead >= 1 and answered == 2


def test_a_stream_cut_after_its_first_event_is_not_sent_again(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    dying, other = mock_upstream(die_after=2, name="dying"), mock_upstream(name="other")
    url = gateway(gateway_config({"g": [dying, other]}, model_route(["g"], "round_robin")))
    outcomes = [_events(url) for _ in range(2)]
    cut = [events for _, events in outcomes if "[DONE]" not in events]
    assert len(cut) == 1 and len(cut[0]) == 3  # two events, then the error event
    assert json.loads(cut[0][-1])["error"]["type"] == "server_error"
    assert _requests(dying, other) == [1, 1]


def test_retry_lost_off_fails_a_dropped_request_rather_than_sending_it_again(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    """For an upstream that bills and might have done the work before its connection
    broke: `retry_lost = false` answers 503 and sends the request nowhere else."""
    a, b = _dropping(mock_upstream, "a"), _dropping(mock_upstream, "b")
    plugins = 'plugins = [{name = "routing", settings = {retry_lost = false}}]'
    url = gateway(gateway_config({"g": [a, b]}, model_route(["g"], "round_robin"), plugins))
    reply = _post(url)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "upstream_unavailable"
    assert sum(_requests(a, b)) == 1


def test_a_timed_out_request_is_not_sent_again(
    mock_upstream: Start, gateway: Callable[[str], str]
) -> None:
    a, b = mock_upstream(delay_ms=3000, name="a"), mock_upstream(delay_ms=3000, name="b")
    backends = f'backends = [{{url = "{a}"}}, {{url = "{b}"}}]\n'
    group = f'[[groups]]\nname = "g"\nread_timeout = 0.2\n{backends}'
    url = gateway(group + model_route(["g"], "round_robin"))
    reply = _post(url)
    assert reply.status_code == 504
    assert sum(_requests(a, b)) == 1
