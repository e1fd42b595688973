"""What n engine requests stream, as the gateway needs it: their deltas merged as they
come (tagged with the choice they belong to), collected into whole choices for a
non-streamed answer, and counted into the OpenAI usage block.

`Choice` is the engine upstream's own accumulator: it keeps token ids and logprobs as
the engine gave them (for the logprob formats of chat and legacy completions) and the
running totals of tokens and speculative guesses, which the chunks the gateway sends
do not carry; building the answer from those chunks instead would cost an encode and a
decode per token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import msgspec

from backend.prompt_scores import TokenScore
from backend.request import Delta, RequestStream
from gateway.payload import Chunk
from gateway.schemas import CompletionTokensDetails, PromptTokensDetails, Usage
from gateway.upstreams.logprobs import TopList


@dataclass(slots=True)
class Choice:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopList] = field(default_factory=list)
    accepted_draft_tokens: int = 0
    rejected_draft_tokens: int = 0
    cached_tokens: int | None = None  # of the prompt, from the prefix cache (first delta's)
    prompt_scores: list[TokenScore] | None = None  # when the prompt was scored

    def count(self, delta: Delta) -> None:
        """Takes the delta's running totals (tokens and guesses so far), not its content."""
        if self.cached_tokens is None:
            self.cached_tokens = delta.cached_tokens
        self.completion_tokens = delta.completion_tokens
        self.accepted_draft_tokens = delta.accepted_draft_tokens
        self.rejected_draft_tokens = delta.rejected_draft_tokens

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.count(delta)
        self.finish_reason = delta.finish_reason
        if delta.prompt_logprobs is not None:
            self.prompt_scores = delta.prompt_logprobs
        if delta.logprobs is not None and delta.top_logprobs is not None:
            self.token_ids += delta.token_ids
            self.logprobs += delta.logprobs
            self.top_logprobs += delta.top_logprobs


async def merge(streams: list[RequestStream]) -> AsyncGenerator[tuple[int, Delta]]:
    """Deltas of several requests as they come, tagged with the request's index.

    Leaving early (the client went away) aborts every request still running.
    """
    if len(streams) == 1:  # the usual n=1: no queue, no task, no hop
        stream = streams[0]
        try:
            async for delta in stream:
                yield 0, delta
        finally:
            stream.abort()
        return
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


async def collect(streams: list[RequestStream], n: int) -> tuple[list[Choice], int]:
    """Runs the requests to the end; returns the choices and the prompt tokens.

    The n choices of one prompt share it, so it is counted once (as OpenAI does).
    """
    choices = [Choice() for _ in streams]
    prompt_tokens: dict[int, int] = {}
    async with contextlib.aclosing(merge(streams)) as merged:
        async for i, delta in merged:
            choices[i].add(delta)
            prompt_tokens[i // n] = delta.prompt_tokens
    return choices, sum(prompt_tokens.values())


def usage_of(prompt_tokens: int, choices: list[Choice], prompts: int = 1) -> Usage:
    """n choices of one prompt count its tokens once (as OpenAI does); `prompts`: how
    many different prompts the choices answer (legacy completions take several)."""
    completion = sum(c.completion_tokens for c in choices)
    accepted = sum(c.accepted_draft_tokens for c in choices)
    rejected = sum(c.rejected_draft_tokens for c in choices)
    per_prompt = max(1, len(choices) // max(1, prompts))
    cached = sum(c.cached_tokens or 0 for c in choices[::per_prompt])
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(
            accepted_prediction_tokens=accepted, rejected_prediction_tokens=rejected
        )
        if accepted or rejected
        else None,
    )


async def chunks(structs: AsyncIterator[msgspec.Struct]) -> AsyncIterator[Chunk]:
    try:
        async for struct in structs:
            yield Chunk.from_struct(struct)
    finally:
        aclose = getattr(structs, "aclose", None)
        if aclose is not None:
            await aclose()  # the client left: the engine requests are aborted
