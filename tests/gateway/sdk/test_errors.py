"""Errors through the official OpenAI SDK and raw HTTP against a real server: 404 for an
unknown model, 400 naming the bad parameter, the OpenAI error shape, huge prompts and
too many generations refused, and the server serving on after each."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.sdk.prompts import CAPITAL, NO_CACHE
from tests.serving import MODEL_ID


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=CAPITAL)
    assert e.value.code == "model_not_found"
    assert e.value.body["param"] == "model"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs=True
        ({"logit_bias": {"not-a-token": 5}}, "logit_bias"),
        ({"logit_bias": {"99999999": 5}}, "logit_bias"),
        ({"extra_body": {"min_p": 2}}, "min_p"),
        ({"max_tokens": 100_000}, "messages"),
    ],
)
def test_bad_parameters_are_400(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    args = {"model": MODEL_ID, "messages": CAPITAL, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.body["param"] == param  # type: ignore[index]
    assert e.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert e.value.body["message"]  # type: ignore[index]


def test_raw_http_errors_have_openai_shape(server_url: str) -> None:
    bad_json = httpx.post(
        server_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx.post(server_url + "/v1/chat/completions", json={"model": MODEL_ID})
    assert missing.status_code == 400
    assert "messages" in missing.json()["error"]["message"]
    nowhere = httpx.get(server_url + "/v1/nothing-here")
    assert nowhere.status_code == 404 and "error" in nowhere.json()
    assert httpx.get(server_url + "/health").json() == {"status": "ok"}


def test_a_huge_prompt_is_refused_and_the_server_keeps_serving(server_url: str) -> None:
    """4 MB of prompt (under the 32 MB body limit): rendered and tokenized off the event
    loop, refused for its length, and the server answers the next request as usual."""
    huge = [{"role": "user", "content": "lorem ipsum " * 350_000}]
    reply = httpx.post(
        server_url + "/v1/chat/completions",
        json={"model": MODEL_ID, "messages": huge, "max_tokens": 1},
        headers=NO_CACHE,
        timeout=120,
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "messages"
    assert httpx.get(server_url + "/health").status_code == 200
    small = {"model": MODEL_ID, "messages": CAPITAL, "max_tokens": 2}
    assert httpx.post(server_url + "/v1/chat/completions", json=small).status_code == 200


def test_too_many_generations_in_one_request_are_refused(client: openai.OpenAI) -> None:
    """64 prompts x n=128 fit in 1 KB: refused, not turned into 8,192 generations."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_ID, prompt=["hi"] * 64, n=128, max_tokens=1)
    assert info.value.code == "too_many_generations"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, n=129, max_tokens=1)


def test_server_keeps_serving_after_errors(client: openai.OpenAI) -> None:
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, temperature=-1)
    r = client.chat.completions.create(
        model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=8
    )
    assert r.choices[0].message.content
