"""The bundled engine as an in-process upstream: OpenAI requests in, engine deltas out.

This is where the OpenAI surface meets the engine's: chat messages are rendered with
the model's chat template, parameters become `SamplingParams`, `n` choices become n
engine requests, and deltas become chunks. Parameters the engine cannot honour yet are
refused with a 400 naming them, never silently ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from backend.engine import Engine, RequestRejected
from backend.request import Delta, RequestStream
from backend.sampler import SamplingParams
from gateway.errors import InvalidRequest
from gateway.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
)
from gateway.upstreams.base import ChatResult, CompletionResult


@dataclass(slots=True)
class _Choice:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0


class EngineUpstream:
    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.fingerprint = f"llm-gateway-{engine.dtype}".replace("torch.", "")

    def model_ids(self) -> list[str]:
        return [self.model_name]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.shutdown)

    # ---- chat ------------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        _refuse_unsupported(request)
        prompt = self._render(request.messages)
        params = _sampling_params(request, request.max_completion_tokens or request.max_tokens)
        streams = self._start([prompt], params, request.n or 1, "messages")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._chat_chunks(streams, rid, created, usage)
        choices, prompt_tokens = await _collect(streams, request.n or 1)
        return ChatCompletion(
            id=rid,
            created=created,
            model=self.model_name,
            choices=[
                ChatChoice(
                    index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason
                )
                for i, c in enumerate(choices)
            ],
            usage=_usage(prompt_tokens, choices),
            system_fingerprint=self.fingerprint,
        )

    async def _chat_chunks(
        self, streams: list[RequestStream], rid: str, created: int, include_usage: bool
    ) -> AsyncIterator[ChatCompletionChunk]:
        def chunk(
            choices: list[ChatChunkChoice], usage: Usage | None = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=rid,
                created=created,
                model=self.model_name,
                choices=choices,
                usage=usage,
                system_fingerprint=self.fingerprint,
            )

        for i in range(len(streams)):
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        totals = [_Choice() for _ in streams]
        prompt_tokens = 0  # n choices of one prompt: counted once
        async for i, delta in _merge(streams):
            prompt_tokens = delta.prompt_tokens
            totals[i].completion_tokens = delta.completion_tokens
            if delta.text:
                yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(content=delta.text))])
            if delta.finish_reason is not None:
                yield chunk(
                    [ChatChunkChoice(index=i, delta=ChatDelta(), finish_reason=delta.finish_reason)]
                )
        if include_usage:
            yield chunk([], _usage(prompt_tokens, totals))

    def _render(self, messages: Sequence[ChatMessage]) -> list[int]:
        try:
            text = self.engine.tokenizer.apply_chat_template(
                [_message_dict(m, i) for i, m in enumerate(messages)], add_generation_prompt=True
            )
        except ValueError as exc:
            raise InvalidRequest(
                f"The messages could not be formatted: {exc}", param="messages"
            ) from exc
        # The template writes special tokens (BOS included) itself; add nothing more.
        return self.engine.tokenizer.encode(text, add_special_tokens=False)

    # ---- legacy completions ---------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        for name, bad in (
            ("logprobs", request.logprobs is not None),
            ("suffix", bool(request.suffix)),
            ("best_of", (request.best_of or 1) > 1),
        ):
            if bad:
                raise InvalidRequest(
                    f"'{name}' is not supported by this model yet.",
                    param=name,
                    code="unsupported_parameter",
                )
        _refuse_penalties(request.presence_penalty, request.frequency_penalty, request.logit_bias)
        prompts = _prompt_list(request.prompt)
        params = _sampling_params(request, request.max_tokens)
        n = request.n or 1
        streams = self._start(prompts, params, n, "prompt")
        echoes = [p if isinstance(p, str) else self.engine.tokenizer.decode(p) for p in prompts]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._completion_chunks(
                streams, rid, created, usage, echoes if request.echo else None, n
            )
        choices, prompt_tokens = await _collect(streams, n)
        return Completion(
            id=rid,
            created=created,
            model=self.model_name,
            choices=[
                CompletionChoice(
                    index=i,
                    text=(echoes[i // n] if request.echo else "") + c.text,
                    finish_reason=c.finish_reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=_usage(prompt_tokens, choices),
            system_fingerprint=self.fingerprint,
        )

    async def _completion_chunks(
        self,
        streams: list[RequestStream],
        rid: str,
        created: int,
        include_usage: bool,
        echoes: list[str] | None,
        n: int,
    ) -> AsyncIterator[Completion]:
        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
            return Completion(
                id=rid,
                created=created,
                model=self.model_name,
                choices=choices,
                usage=usage,
                system_fingerprint=self.fingerprint,
            )

        if echoes is not None:
            for i in range(len(streams)):
                yield chunk([CompletionChoice(index=i, text=echoes[i // n], finish_reason=None)])
        totals = [_Choice() for _ in streams]
        prompt_tokens: dict[int, int] = {}
        async for i, delta in _merge(streams):
            prompt_tokens[i // n] = delta.prompt_tokens
            totals[i].completion_tokens = delta.completion_tokens
            if delta.text or delta.finish_reason is not None:
                yield chunk(
                    [CompletionChoice(index=i, text=delta.text, finish_reason=delta.finish_reason)]
                )
        if include_usage:
            yield chunk([], _usage(sum(prompt_tokens.values()), totals))

    # ---- shared ----------------------------------------------------------------------------

    def _start(
        self, prompts: Sequence[str | list[int]], params: SamplingParams, n: int, param: str
    ) -> list[RequestStream]:
        """One engine request per (prompt, choice); choice i of a seeded request uses seed+i.

        `param` names the request field a rejected prompt is reported against.
        """
        streams: list[RequestStream] = []
        try:
            for prompt in prompts:
                for i in range(n):
                    p = (
                        params
                        if params.seed is None or i == 0
                        else _with_seed(params, params.seed + i)
                    )
                    streams.append(self.engine.add_request(prompt, p))
        except RequestRejected as exc:
            for s in streams:
                s.abort()
            raise InvalidRequest(
                str(exc), param="messages", code="context_length_exceeded"
            ) from exc
        return streams


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    wrapped = (seed + 2**63) % 2**64 - 2**63  # stay a signed 64-bit value past the top
    return dataclasses.replace(params, seed=wrapped)


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Delta]]:
    """Deltas of several requests as they come, tagged with the request's index.

    Leaving early (the client went away) aborts every request still running.
    """
    queue: asyncio.Queue[tuple[int, Delta | BaseException]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for delta in stream:
                await queue.put((i, delta))
        except Exception as exc:
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        pending = len(streams)
        while pending:
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.finish_reason is not None:
                pending -= 1
            yield i, item
    finally:
        for s in streams:
            s.abort()
        for t in tasks:
            t.cancel()


async def _collect(streams: list[RequestStream], n: int) -> tuple[list[_Choice], int]:
    """Runs the requests to the end; returns the choices and the prompt tokens.

    The n choices of one prompt share it, so it is counted once (as OpenAI does).
    """
    choices = [_Choice() for _ in streams]
    prompt_tokens: dict[int, int] = {}
    async for i, delta in _merge(streams):
        choices[i].text += delta.text
        choices[i].completion_tokens = delta.completion_tokens
        choices[i].finish_reason = delta.finish_reason
        prompt_tokens[i // n] = delta.prompt_tokens
    return choices, sum(prompt_tokens.values())


def _usage(prompt_tokens: int, choices: list[_Choice]) -> Usage:
    completion = sum(c.completion_tokens for c in choices)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
    )


def _sampling_params(
    request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> SamplingParams:
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None or request.top_p == 0 else request.top_p,
            top_k=max(0, request.top_k or 0),
            seed=request.seed,
            stop=[s for s in stop if s],
            ignore_eos=bool(request.ignore_eos),
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    unsupported = {
        "logprobs": bool(request.logprobs),
        "top_logprobs": bool(request.top_logprobs),
        "tools": bool(request.tools),
        "response_format": (request.response_format or {}).get("type") not in (None, "text"),
    }
    for name, used in unsupported.items():
        if used:
            raise InvalidRequest(
                f"'{name}' is not supported by this model yet.",
                param=name,
                code="unsupported_parameter",
            )
    _refuse_penalties(request.presence_penalty, request.frequency_penalty, request.logit_bias)


def _refuse_penalties(
    presence: float | None, frequency: float | None, bias: dict[str, float] | None
) -> None:
    for name, used in (
        ("presence_penalty", bool(presence)),
        ("frequency_penalty", bool(frequency)),
        ("logit_bias", bool(bias)),
    ):
        if used:
            raise InvalidRequest(
                f"'{name}' is not supported by this model yet.",
                param=name,
                code="unsupported_parameter",
            )


def _message_dict(message: ChatMessage, index: int) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise InvalidRequest(
                    f"Content of type '{part.type}' is not supported by this model; only text is.",
                    param=f"messages[{index}].content",
                )
            texts.append(part.text)
        content = "".join(texts)
    out: dict[str, Any] = {
        "role": "system" if message.role == "developer" else message.role,
        "content": content or "",
    }
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": c.type,
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _prompt_list(prompt: str | list[str | int | list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [[int(p) for p in prompt]]  # type: ignore[arg-type]
    if all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
        return list(prompt)  # type: ignore[arg-type]
    raise InvalidRequest(
        "'prompt' must be a string, a list of strings, a list of token ids or a list of lists "
        "of token ids.",
        param="prompt",
    )
