"""Function calling through the official OpenAI SDK against the real model: forced calls
(a named function, `required`) always carry arguments valid for the function's schema,
streamed as OpenAI streams them; a call, its result and the final answer round-trip."""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, ConfigDict

from tests.gateway.sdk.prompts import NO_CACHE
from tests.serving import MODEL_ID


class WeatherArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str
    unit: Literal["celsius", "fahrenheit"] | None = None


class TimeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str


def _tool(name: str, description: str, args: type[BaseModel]) -> dict[str, Any]:
    schema = args.model_json_schema()
    return {"type": "function", "function": {"name": name, "description": description,
            "parameters": schema}}  # fmt: skip


WEATHER = _tool("get_weather", "The current weather in a city.", WeatherArgs)
TIME = _tool("get_time", "The current time in a timezone.", TimeArgs)
ARGS = {"get_weather": WeatherArgs, "get_time": TimeArgs}
QUESTIONS = [
    "What is the weather in Paris?",
    "Is it raining in Seattle today?",
    "What time is it in Tokyo?",
    "How warm is it in Cairo, in fahrenheit?",
    "Tell me the time in New York.",
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def _ask(client: openai.OpenAI, question: str, choice: Any, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": question}], tools=[WEATHER, TIME],
        tool_choice=choice, max_tokens=200, extra_headers=NO_CACHE, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_forced_calls_have_valid_arguments(client: openai.OpenAI, choice: Any) -> None:
    for i, question in enumerate(QUESTIONS):
        r = _ask(client, question, choice, temperature=0.8, seed=i, parallel_tool_calls=False)
        choice_out = r.choices[0]
        assert choice_out.finish_reason == "tool_calls"
        calls = choice_out.message.tool_calls or []
        assert len(calls) == 1 and calls[0].id.startswith("call_")
        name = calls[0].function.name
        assert name == "get_weather" if choice is NAMED else name in ARGS
        ARGS[name].model_validate_json(calls[0].function.arguments)


@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_forced_calls_stream_as_openai_streams_them(client: openai.OpenAI, choice: Any) -> None:
    plain = _ask(client, QUESTIONS[0], choice, temperature=0).choices[0].message.tool_calls
    chunks = list(_ask(client, QUESTIONS[0], choice, temperature=0, stream=True))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function and delta.function.name:
                call["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert plain is not None and len(calls) == len(plain)
    for i, call in enumerate(plain):
        assert calls[i]["name"] == call.function.name
        assert json.loads(calls[i]["arguments"]) == json.loads(call.function.arguments)


def test_call_result_and_final_answer_round_trip(client: openai.OpenAI) -> None:
    """The model calls (forced: this 135M model, shown tools in its system message, does
    not call on its own), gets the result back as a tool message, and answers in text
    with tool_choice auto."""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = _ask(client, question[0]["content"], "required", temperature=0).choices[0].message
    call = (first.tool_calls or [])[0]
    result = {
        "role": "tool",
        "tool_call_id": call.id,
        "content": '{"celsius": 18, "sky": "cloudy"}',
    }
    history = [*question, first.model_dump(exclude_none=True), result]
    final = client.chat.completions.create(
        model=MODEL_ID, messages=history, tools=[WEATHER, TIME], max_tokens=60,
        temperature=0, extra_headers=NO_CACHE,
    )  # fmt: skip
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length") and not answer.message.tool_calls
    assert answer.message.content
    # The result reached the model: its prompt holds the call and the result's text.
    assert final.usage is not None and final.usage.prompt_tokens > 60


def test_tool_choice_none_and_bad_tools(client: openai.OpenAI) -> None:
    r = _ask(client, QUESTIONS[0], "none", temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason != "tool_calls"
    with pytest.raises(openai.BadRequestError) as err:
        _ask(client, QUESTIONS[0], {"type": "function", "function": {"name": "send_email"}})
    assert err.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        _ask(client, QUESTIONS[0], "required", response_format={"type": "json_object"})
    assert err.value.body["param"] == "response_format"  # type: ignore[index]
