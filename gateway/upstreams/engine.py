"""The bundled engine as an in-process upstream: OpenAI requests in, engine deltas out.

This is where the OpenAI surface meets the engine's: chat messages are rendered with
the model's chat template, fields become `SamplingParams` (engine_params.py), `n`
choices become n engine requests, and deltas become chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import msgspec

from backend.engine import Engine, RequestRejected
from backend.prompt_scores import TokenScore
from backend.request import RequestStream
from backend.sampling_params import SamplingParams
from backend.structured import GrammarError, GrammarSpec
from gateway.call import CHAT, COMPLETIONS, Call, Reply
from gateway.errors import InvalidRequest, invalid_body
from gateway.payload import DecodeErrors, Payload, decoder
from gateway.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
)
from gateway.upstreams.chat_prompt import off_loop_if_large, render_chat, text_size
from gateway.upstreams.engine_params import (
    chat_logprobs,
    completion_logprobs,
    prompt_list,
    prompt_scoring,
    sampling_params,
)
from gateway.upstreams.engine_streams import Choice, chunks, collect, merge, usage_of
from gateway.upstreams.grammar_params import compile_error, grammar_spec
from gateway.upstreams.logprobs import Echo, LogprobFormatter
from gateway.upstreams.tools import (
    CallStream,
    ToolRequest,
    assistant_reply,
    call_grammar,
    tool_request,
)

# Engine requests one call may start (prompts x n): past this a request is refused, so
# a 1 KB body cannot become thousands of generations.
MAX_SEQUENCES = 128


class EngineUpstream:
    endpoints = frozenset({CHAT, COMPLETIONS})

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.fingerprint = f"llm-gateway-{engine.dtype}".replace("torch.", "")
        self.logprobs = LogprobFormatter(engine.tokenizer)

    def capacity(self) -> tuple[int, int]:
        """(sequences one step runs, tokens the KV cache holds): what admission bounds
        derive from (gateway/runtime/admission.py)."""
        config = self.engine.config
        return config.max_num_seqs, self.engine.blocks.num_blocks * config.block_size

    async def ready(self) -> bool:
        return self.engine.alive

    def alive(self) -> bool:
        return self.engine.alive

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.shutdown)

    async def send(self, call: Call, model: str | None, headers: Mapping[str, str]) -> Reply:
        """The call's body read by the engine's own request types: every field it uses
        checked (a 400 naming the bad one), fields it does not know ignored."""
        chat = call.endpoint == CHAT
        try:
            request = decoder(ChatCompletionRequest if chat else CompletionRequest).decode(
                call.body.raw
            )
        except DecodeErrors as exc:
            raise invalid_body(exc) from None
        result: Any = await (self.chat(request) if chat else self.complete(request))
        if isinstance(result, msgspec.Struct):
            return Reply(body=Payload.from_struct(result))
        return Reply(stream=chunks(result))

    # ---- chat ------------------------------------------------------------------------------

    async def chat(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        k, tools = chat_logprobs(request), tool_request(request)
        render = functools.partial(render_chat, self.engine.tokenizer, tools=tools)
        prompt = await off_loop_if_large(text_size(request.messages), render, request.messages)
        max_tokens = request.max_completion_tokens or request.max_tokens
        vocab, grammar = self.engine.tokenizer.vocab_size, await self._grammar(request, tools)
        params = sampling_params(request, max_tokens, k, vocab, prompt_scoring(request, k), grammar)
        n = request.n or 1
        streams = self._start([prompt], params, n, "messages")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._chat_chunks(streams, rid, created, usage, tools)
        choices, prompt_tokens = await collect(streams, n)
        replies = [assistant_reply(c.text, c.finish_reason, tools) for c in choices]
        return ChatCompletion(
            id=rid,
            created=created,
            model=self.model_name,
            choices=[
                ChatChoice(
                    index=i,
                    message=message,
                    finish_reason=finish_reason,
                    logprobs=self._chat_logprobs(c) if k is not None else None,
                )
                for i, (c, (message, finish_reason)) in enumerate(
                    zip(choices, replies, strict=True)
                )
            ],
            usage=usage_of(prompt_tokens, choices),
            system_fingerprint=self.fingerprint,
            prompt_logprobs=None
            if request.prompt_logprobs is None
            else self.logprobs.prompt(
                prompt, choices[0].prompt_scores or [], request.prompt_logprobs
            ),
        )

    def _chat_logprobs(self, c: Choice) -> ChoiceLogprobs:
        return ChoiceLogprobs(content=self.logprobs.chat(c.token_ids, c.logprobs, c.top_logprobs))

    async def _chat_chunks(
        self,
        streams: list[RequestStream],
        rid: str,
        created: int,
        include_usage: bool,
        tools: ToolRequest | None,
    ) -> AsyncIterator[ChatCompletionChunk]:
        def chunk(
            choices: list[ChatChunkChoice], usage: Usage | None = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=rid, created=created, model=self.model_name, choices=choices, usage=usage,
                system_fingerprint=self.fingerprint,
            )  # fmt: skip

        def roles() -> list[ChatCompletionChunk]:
            role = ChatDelta(role="assistant", content="")
            return [chunk([ChatChunkChoice(index=i, delta=role)]) for i in range(len(streams))]

        totals = [Choice() for _ in streams]
        calls = [CallStream(tools) if tools else None for _ in streams]  # tool calls parsed out
        prompt_tokens = 0  # n choices of one prompt: counted once
        started = False
        async with contextlib.aclosing(merge(streams)) as merged:  # aborts on early exit
            async for i, delta in merged:
                if not started:
                    # The role chunks go with the first token, not at admission (as vLLM):
                    # the first event then means the answer has begun (clients time their
                    # first token by it), and a request still queued when its server dies
                    # has sent nothing, so a gateway in front may send it elsewhere.
                    started = True
                    for role in roles():
                        yield role
                prompt_tokens = delta.prompt_tokens
                totals[i].count(delta)
                logprobs = None
                if delta.logprobs is not None and delta.top_logprobs is not None:
                    entries = self.logprobs.chat(
                        delta.token_ids, delta.logprobs, delta.top_logprobs
                    )
                    logprobs = ChoiceLogprobs(content=entries)
                text, tool_calls, finish = delta.text, None, delta.finish_reason
                parser = calls[i]
                if parser is not None:
                    parser.feed(text)
                    if finish is not None:
                        parser.finish()
                        finish = "tool_calls" if parser.calls else finish
                    text, deltas = parser.take()
                    tool_calls = deltas or None
                if text or logprobs is not None or tool_calls:
                    content = ChatDelta(content=text or None, tool_calls=tool_calls)
                    yield chunk([ChatChunkChoice(index=i, delta=content, logprobs=logprobs)])
                if finish is not None:
                    yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(), finish_reason=finish)])
        if not started:
            for role in roles():
                yield role
        if include_usage:
            yield chunk([], usage_of(prompt_tokens, totals))

    def _tokenized(self, prompts: list[str | list[int]]) -> list[list[int]]:
        """Text prompts as token ids, as the engine would make them (BOS included)."""
        encode = self.engine.tokenizer.encode
        return [encode(p, add_special_tokens=True) if isinstance(p, str) else p for p in prompts]

    # ---- legacy completions ---------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion | AsyncIterator[Completion]:
        k = completion_logprobs(request)
        texts = prompt_list(request.prompt)
        vocab = self.engine.tokenizer.vocab_size
        scoring, grammar = prompt_scoring(request, k), await self._grammar(request)
        params = sampling_params(request, request.max_tokens, k, vocab, scoring, grammar)
        n = request.n or 1
        size = sum(len(p) for p in texts if isinstance(p, str))
        prompts = await off_loop_if_large(size, self._tokenized, texts)
        streams = self._start(prompts, params, n, "prompt")
        echo = Echo(
            self.logprobs,
            prompts,
            [p if isinstance(p, str) else self.engine.tokenizer.decode(p) for p in texts]
            if request.echo
            else [""] * len(prompts),
            k if request.echo else None,
        )
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._completion_chunks(streams, rid, created, usage, echo, n)
        choices, prompt_tokens = await collect(streams, n)
        out = []
        for i, c in enumerate(choices):
            p, scores = i // n, choices[i - i % n].prompt_scores or []  # choice 0 scored it
            logprobs = None
            if k is not None:
                logprobs = self.logprobs.completion(
                    c.token_ids, c.logprobs, c.top_logprobs, len(echo.texts[p])
                )
                logprobs = echo.logprobs(p, scores, logprobs)
            prompt_logprobs = None
            if request.prompt_logprobs is not None:
                prompt_logprobs = self.logprobs.prompt(prompts[p], scores, request.prompt_logprobs)
            out.append(
                CompletionChoice(
                    index=i,
                    text=echo.texts[p] + c.text,
                    finish_reason=c.finish_reason,
                    logprobs=logprobs,
                    prompt_logprobs=prompt_logprobs,
                )
            )
        return Completion(
            id=rid,
            created=created,
            model=self.model_name,
            choices=out,
            usage=usage_of(prompt_tokens, choices, len(prompts)),
            system_fingerprint=self.fingerprint,
        )

    async def _completion_chunks(
        self,
        streams: list[RequestStream],
        rid: str,
        created: int,
        include_usage: bool,
        echo: Echo,
        n: int,
    ) -> AsyncIterator[Completion]:
        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
            return Completion(
                id=rid, created=created, model=self.model_name, choices=choices, usage=usage,
                system_fingerprint=self.fingerprint,
            )  # fmt: skip

        offsets = [len(echo.texts[i // n]) for i in range(len(streams))]
        scores: dict[int, list[TokenScore]] = {}  # by prompt: choice 0's
        totals = [Choice() for _ in streams]
        prompt_tokens: dict[int, int] = {}
        async with contextlib.aclosing(merge(streams)) as merged:  # aborts on early exit
            async for i, delta in merged:
                p = i // n
                if delta.prompt_logprobs is not None:
                    scores[p] = delta.prompt_logprobs
                if i not in prompt_tokens and echo.texts[p]:
                    # The echo goes with the choice's first delta: then the prompt has been
                    # scored, and nothing is sent for a request that never started.
                    echoed = echo.logprobs(p, scores.get(p, []), None)
                    yield chunk([CompletionChoice(
                        index=i, text=echo.texts[p], finish_reason=None, logprobs=echoed
                    )])  # fmt: skip
                prompt_tokens[i] = delta.prompt_tokens
                totals[i].count(delta)
                logprobs = None
                if delta.logprobs is not None and delta.top_logprobs is not None:
                    logprobs = self.logprobs.completion(
                        delta.token_ids, delta.logprobs, delta.top_logprobs, offsets[i]
                    )
                offsets[i] += len(delta.text)
                if delta.text or delta.finish_reason is not None or logprobs is not None:
                    yield chunk(
                        [
                            CompletionChoice(
                                index=i,
                                text=delta.text,
                                finish_reason=delta.finish_reason,
                                logprobs=logprobs,
                            )
                        ]
                    )
        if include_usage:
            once = sum(t for i, t in prompt_tokens.items() if i % n == 0)  # once per prompt
            yield chunk([], usage_of(once, totals, len(echo.texts)))

    # ---- shared ----------------------------------------------------------------------------

    async def _grammar(
        self, request: ChatCompletionRequest | CompletionRequest, tools: ToolRequest | None = None
    ) -> GrammarSpec | None:
        """The request's constraint (its own, or a forced tool call's), compiled now (on a
        worker thread: a large schema takes milliseconds), so one the library refuses is a
        400 before anything is queued."""
        found = grammar_spec(request)
        forced = call_grammar(tools) if tools is not None else None
        if forced is not None:
            if found is not None:
                raise InvalidRequest(
                    f"'{found[1]}' cannot be combined with a forced tool call ('tool_choice').",
                    param=found[1],
                )
            found = (forced, "tools")
        if found is None:
            return None
        spec, param = found
        try:
            await asyncio.to_thread(self.engine.grammars.compile, spec)
        except GrammarError as exc:
            raise compile_error(exc, spec, param) from None
        return spec

    def _start(
        self, prompts: Sequence[str | list[int]], params: SamplingParams, n: int, param: str
    ) -> list[RequestStream]:
        """One engine request per (prompt, choice); choice i of a seeded request uses seed+i.

        `param` names the request field a rejected prompt is reported against.
        """
        if len(prompts) * n > MAX_SEQUENCES:
            raise InvalidRequest(
                f"This request asks for {len(prompts) * n} generations ({len(prompts)} "
                f"prompts x n={n}); at most {MAX_SEQUENCES} are allowed in one request.",
                param="n" if n > 1 else param,
                code="too_many_generations",
            )
        streams: list[RequestStream] = []
        try:
            for prompt in prompts:
                for i in range(n):
                    first = streams[-i] if i else None  # choice 0 of this prompt
                    p = _choice_params(params, i)
                    streams.append(self.engine.add_request(prompt, p, same_prompt_as=first))
        except RequestRejected as exc:
            for s in streams:
                s.abort()
            raise InvalidRequest(str(exc), param=param, code=exc.code) from exc
        return streams


def _choice_params(params: SamplingParams, i: int) -> SamplingParams:
    """Choice i of n: a seeded request's choice i uses seed + i; only choice 0 scores the
    prompt (the others share it, and its blocks through the prefix cache)."""
    if i == 0:
        return params
    seed = params.seed
    if seed is not None:
        seed = (seed + i + 2**63) % 2**64 - 2**63  # stay a signed 64-bit value past the top
    return dataclasses.replace(params, seed=seed, prompt_logprobs=None)
